"""Loss and gradient invariants: each fires on a deliberately broken objective and is silent on the correct one."""

from __future__ import annotations

import torch
from invariants_builders import build_step, loss_grad, only, with_tensors

from grpo_check.config import GRPOSpec
from grpo_check.findings import Verdict
from grpo_check.invariants import run_invariants
from grpo_check.trace.model import TraceStep


def run(step, spec, check_id):
    return only(run_invariants(step, spec, checks=[check_id]), check_id)


def objective(step, *, eps_low=0.2, eps_high=0.2, clip=True, sign=1.0, detach=False, mask=None, beta=0.0):
    """A token-mean clipped-surrogate objective over the step's tensors, with knobs to break it."""
    advantages = step["advantages"].unsqueeze(1)
    old = step["old_logps"]
    loss_mask = step["completion_mask"] if mask is None else mask

    def loss_fn(logps):
        ratio = torch.exp((logps.detach() if detach else logps) - old)
        surrogate = ratio * advantages
        if clip:
            surrogate = torch.min(surrogate, ratio.clamp(1 - eps_low, 1 + eps_high) * advantages)
        per_token = -surrogate
        if beta:
            ref = step["ref_logps"]
            per_token = per_token + beta * (torch.exp(ref - logps) - (ref - logps) - 1)
        return sign * (per_token * loss_mask).sum() / loss_mask.sum().clamp(min=1)

    return loss_grad(step["logps"], loss_fn)


# --- sign of the gradient ---------------------------------------------------------------------------


def test_sign_fires_on_sign_flipped_loss():
    built = build_step(off_policy=True, seed=1)
    assert torch.allclose(
        objective(built.step), built.step["logps_grad"]
    )  # the knob-free objective is correct
    flipped = with_tensors(built.step, logps_grad=objective(built.step, sign=-1.0))
    finding = run(flipped, built.spec, "grad.sign_matches_advantage")
    assert finding.verdict is Verdict.FAIL and finding.catalog_id == "21"
    row, token = finding.where.row, finding.where.token
    assert float(flipped["logps_grad"][row, token]) * float(built.step["advantages"][row]) > 0
    assert run(built.step, built.spec, "grad.sign_matches_advantage").verdict is Verdict.PASS


def test_sign_fires_on_a_detached_policy_term():
    built = build_step(off_policy=True, seed=2)
    detached = with_tensors(built.step, logps_grad=objective(built.step, detach=True))
    finding = run(detached, built.spec, "grad.sign_matches_advantage")
    assert finding.verdict is Verdict.FAIL and "zero gradient" in finding.explanation


def test_sign_with_kl_term_accounts_for_it():
    built = build_step(off_policy=True, beta=0.04, seed=3)
    assert run(built.step, built.spec, "grad.sign_matches_advantage").verdict is Verdict.PASS
    flipped = with_tensors(built.step, logps_grad=objective(built.step, beta=0.04, sign=-1.0))
    assert run(flipped, built.spec, "grad.sign_matches_advantage").verdict is Verdict.FAIL
    # a KL term so large that it could flip any token: the check declines to judge
    huge = built.spec.replace(beta=1e6)
    assert run(built.step, huge, "grad.sign_matches_advantage").verdict is Verdict.INCONCLUSIVE
    without_ref = with_tensors(built.step, ref_logps=None)
    assert run(without_ref, built.spec, "grad.sign_matches_advantage").verdict is Verdict.INCONCLUSIVE


def test_clip_higher_computed_but_not_used_is_caught():
    """The spec says ε_high = 0.28; the objective clips at 0.2: A > 0 tokens with ρ in (1.2, 1.28] lose gradient."""
    for seed in range(40):
        built = build_step(off_policy=True, epsilon_high=0.28, seed=seed)
        ratio, advantages = built.step["ratio"], built.step["advantages"].unsqueeze(1)
        window = (ratio > 1.21) & (ratio < 1.27) & (advantages > 0) & built.step["completion_mask"].bool()
        if window.any():
            break
    assert window.any(), "no seed puts a token in the clip-higher window"
    assert run(built.step, built.spec, "grad.sign_matches_advantage").verdict is Verdict.PASS
    unused = with_tensors(built.step, logps_grad=objective(built.step, eps_high=0.2))
    finding = run(unused, built.spec, "grad.sign_matches_advantage")
    assert finding.verdict is Verdict.FAIL and "ε_high computed but not used" in finding.likely_cause
    assert bool(window[finding.where.row, finding.where.token])


# --- clipping ---------------------------------------------------------------------------------------


def test_zero_where_clipped_fires_when_clipping_is_not_applied():
    built = build_step(off_policy=True, seed=4)
    correct = run(built.step, built.spec, "grad.zero_where_clipped")
    assert correct.verdict is Verdict.PASS and correct.details.get("applicable") is not False
    unclipped = with_tensors(built.step, logps_grad=objective(built.step, clip=False))
    finding = run(unclipped, built.spec, "grad.zero_where_clipped")
    assert finding.verdict is Verdict.FAIL and finding.catalog_id == "21"
    assert finding.figure > 0 and finding.details["clipped_tokens"] >= 1


def test_zero_where_clipped_from_masks_only():
    built = build_step(off_policy=True, seed=4)
    unclipped = with_tensors(built.step, logps_grad=objective(built.step, clip=False), ratio=None, logps=None)
    finding = run(unclipped, built.spec, "grad.zero_where_clipped")
    assert finding.verdict is Verdict.FAIL and finding.details["clip_region_from"].startswith("is_low")


def test_zero_where_clipped_is_inconclusive_with_kl():
    built = build_step(off_policy=True, beta=0.04, seed=4)
    assert run(built.step, built.spec, "grad.zero_where_clipped").verdict is Verdict.INCONCLUSIVE


def test_sequence_level_ratio_gspo():
    built = build_step(off_policy=True, seed=8)
    step, spec = built.step, built.spec.replace(importance_sampling_level="sequence", epsilon=0.05)
    mask = step["completion_mask"].double()
    advantages = step["advantages"].unsqueeze(1).double()
    old = step["old_logps"].double()

    def gspo(logps, clip=True):
        sequence = torch.exp(((logps - old) * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True))
        surrogate = sequence * advantages
        if clip:
            surrogate = torch.min(surrogate, sequence.clamp(0.95, 1.05) * advantages)
        return (-surrogate * mask).sum() / mask.sum()

    good = with_tensors(step, ratio=None, logps_grad=loss_grad(step["logps"].double(), gspo))
    assert run(good, spec, "grad.sign_matches_advantage").verdict is Verdict.PASS
    assert run(good, spec, "grad.zero_where_clipped").verdict is Verdict.PASS
    bad_grad = loss_grad(step["logps"].double(), lambda logps: gspo(logps, clip=False))
    assert (
        run(with_tensors(good, logps_grad=bad_grad), spec, "grad.zero_where_clipped").verdict is Verdict.FAIL
    )


# --- loss mask --------------------------------------------------------------------------------------


def test_zero_outside_loss_mask_fires_on_tool_tokens_trained():
    built = build_step(off_policy=True, tool_tokens=True, seed=5)
    assert run(built.step, built.spec, "grad.zero_outside_loss_mask").verdict is Verdict.PASS
    trained_on_tools = with_tensors(built.step, logps_grad=objective(built.step))  # completion_mask only
    finding = run(trained_on_tools, built.spec, "grad.zero_outside_loss_mask")
    assert finding.verdict is Verdict.FAIL and finding.catalog_id == "28"
    assert finding.where.token in (1, 2)


def test_zero_outside_loss_mask_fires_on_padding_trained():
    built = build_step(off_policy=True, seed=5)
    everything = torch.ones_like(built.step["completion_mask"])
    padded = with_tensors(built.step, logps_grad=objective(built.step, mask=everything))
    finding = run(padded, built.spec, "grad.zero_outside_loss_mask")
    assert finding.verdict is Verdict.FAIL and finding.catalog_id == "11"
    assert not bool(built.step["completion_mask"][finding.where.row, finding.where.token])


# --- finiteness and normaliser ----------------------------------------------------------------------


def test_grad_and_loss_finite():
    built = build_step()
    grad = built.step["logps_grad"].clone()
    grad[2, 0] = float("nan")
    assert run(with_tensors(built.step, logps_grad=grad), built.spec, "grad.finite").where.row == 2
    assert (
        run(with_tensors(built.step, loss=torch.tensor(float("nan"))), built.spec, "loss.finite").verdict
        is Verdict.FAIL
    )
    assert run(built.step, built.spec, "loss.finite").verdict is Verdict.PASS


def test_normalizer_positive():
    built = build_step()
    assert run(built.step, built.spec, "loss.normalizer_positive").verdict is Verdict.PASS
    zero = with_tensors(built.step, loss_normalizer=torch.tensor(0.0))
    assert run(zero, built.spec, "loss.normalizer_positive").verdict is Verdict.FAIL


def test_sign_for_sapo_with_kl():
    built = build_step(off_policy=True, beta=0.04, seed=9)
    step, spec = built.step, built.spec.replace(loss_type="sapo")
    advantages = step["advantages"].unsqueeze(1)
    old, ref, mask = step["old_logps"], step["ref_logps"], step["completion_mask"]

    def sapo(logps, sign=1.0):
        ratio = torch.exp(logps - old)
        temperature = torch.where(advantages > 0, 1.0, 1.05)
        per_token = -torch.sigmoid(temperature * (ratio - 1)) * 4 / temperature * advantages
        per_token = per_token + 0.04 * (torch.exp(ref - logps) - (ref - logps) - 1)
        return sign * (per_token * mask).sum() / mask.sum()

    good = with_tensors(step, logps_grad=loss_grad(step["logps"], sapo))
    assert run(good, spec, "grad.sign_matches_advantage").verdict is Verdict.PASS
    flipped = with_tensors(step, logps_grad=loss_grad(step["logps"], lambda logps: sapo(logps, -1.0)))
    assert run(flipped, spec, "grad.sign_matches_advantage").verdict is Verdict.FAIL


def test_partially_zero_gradient_is_a_warning_not_a_detach_failure():
    """Tool tokens masked by the trainer but tool_mask not captured: some unclipped tokens get no gradient."""
    built = build_step(off_policy=True, tool_tokens=True, seed=5)
    uncaptured = with_tensors(built.step, tool_mask=None)
    finding = run(uncaptured, built.spec, "grad.sign_matches_advantage")
    assert finding.verdict is Verdict.WARN and "tool_mask" in finding.likely_cause


def test_kl_sign_where_advantage_zero_fires_on_a_flipped_kl_penalty():
    """Rows of the all-equal first group have A = 0: only the KL penalty moves them, towards the reference."""
    built = build_step(off_policy=True, beta=0.04, seed=3)
    assert bool((built.step["advantages"] == 0).any())
    finding = run(built.step, built.spec, "grad.kl_sign_where_kl_dominates")
    assert finding.verdict is Verdict.PASS and finding.details["judged_tokens"] > 0
    flipped = with_tensors(built.step, logps_grad=objective(built.step, beta=-0.04))  # loss − β·KL
    finding = run(flipped, built.spec, "grad.kl_sign_where_kl_dominates")
    assert finding.verdict is Verdict.FAIL and finding.catalog_id == "21"
    assert float(built.step["advantages"][finding.where.row]) == 0.0
    no_kl = run(built.step, built.spec.replace(beta=0.0), "grad.kl_sign_where_kl_dominates")
    assert no_kl.details.get("applicable") is False


def test_kl_sign_with_bias_correction_and_k1():
    built = build_step(off_policy=True, beta=0.04, seed=3)
    step = built.step
    advantages, old, ref, mask = (
        step["advantages"].unsqueeze(1),
        step["old_logps"],
        step["ref_logps"],
        step["completion_mask"],
    )

    def loss_with(estimator, sign=1.0):
        def loss_fn(logps):
            ratio = torch.exp(logps - old)
            policy = -torch.min(ratio * advantages, ratio.clamp(0.8, 1.2) * advantages)
            x = ref - logps
            kl = {"k1": -x, "k3": torch.exp(x) - x - 1}[estimator] * ratio  # use_bias_correction_kl
            return ((policy + sign * 0.04 * kl) * mask).sum() / mask.sum()

        return loss_fn

    spec = built.spec.replace(use_bias_correction_kl=True)
    for estimator in ("k1", "k3"):
        meta_step = with_tensors(step, logps_grad=loss_grad(step["logps"], loss_with(estimator)))
        meta_step.meta["kl_estimator"] = estimator
        assert run(meta_step, spec, "grad.kl_sign_where_kl_dominates").verdict is Verdict.PASS
        assert run(meta_step, spec, "grad.sign_matches_advantage").verdict is Verdict.PASS
        flipped = with_tensors(meta_step, logps_grad=loss_grad(step["logps"], loss_with(estimator, -1.0)))
        assert run(flipped, spec, "grad.kl_sign_where_kl_dominates").verdict is Verdict.FAIL


def test_kl_sign_with_bias_correction_at_sequence_level():
    """GSPO ratio ρ = exp(mean_s(logp_s − old_s)) per row, KL term ρ·k_t: ∂/∂logp_t = ρ·(k'_t + mean_s k_s).
    The token-level slope ρ·(k_t + k'_t) (plus the mean) flips the sign of a token whose k'_t lies in
    (−k_t − mean k, −mean k), and the invariant then failed a correct TRL run (demo cell
    dapo-seqIS-beta-padeos-iters2, step 10). Row 0 is clipped (ρ = e^−0.5 < 0.8 with A < 0): only the KL
    term moves it, and its token 0 (x = ref − logp = 0.39) is such a token."""
    gap = torch.tensor([[0.39, 1.0, 1.0, -1.0], [0.1, -0.2, 0.3, 0.0]], dtype=torch.float64)
    logps = torch.tensor([[-1.0, -2.0, -1.5, -0.5], [-1.2, -0.7, -2.2, -0.9]], dtype=torch.float64)
    old = logps + torch.tensor([[0.5], [-0.05]], dtype=torch.float64)  # row 0: mean log ρ = −0.5 (clipped)
    ref = logps + gap
    advantages = torch.tensor([-1.0, 1.0], dtype=torch.float64)
    mask = torch.ones(2, 4, dtype=torch.long)

    def loss_fn_with(sign):
        def loss_fn(new_logps):
            ratio = torch.exp((new_logps - old).mean(-1, keepdim=True))  # (B, 1): the row's sequence ratio
            a = advantages.unsqueeze(1)
            policy = -torch.min(ratio * a, ratio.clamp(0.8, 1.2) * a)
            x = ref - new_logps
            kl = (torch.exp(x) - x - 1) * ratio  # use_bias_correction_kl, k3
            return ((policy + sign * 0.04 * kl) * mask).sum() / mask.sum()

        return loss_fn

    spec = GRPOSpec(
        num_generations=2,
        loss_type="dapo",
        beta=0.04,
        importance_sampling_level="sequence",
        use_bias_correction_kl=True,
    )
    tensors = {
        "logps": logps,
        "old_logps": old,
        "ref_logps": ref,
        "advantages": advantages,
        "completion_mask": mask,
    }
    meta = {"kl_estimator": "k3", "optimizer_steps_since_old_logps": 1}
    correct = TraceStep(tensors={**tensors, "logps_grad": loss_grad(logps, loss_fn_with(1.0))}, meta=meta)
    finding = run(correct, spec, "grad.kl_sign_where_kl_dominates")
    assert finding.verdict is Verdict.PASS and finding.details["judged_tokens"] >= 4
    flipped = TraceStep(tensors={**tensors, "logps_grad": loss_grad(logps, loss_fn_with(-1.0))}, meta=meta)
    assert run(flipped, spec, "grad.kl_sign_where_kl_dominates").verdict is Verdict.FAIL  # loss − β·KL
