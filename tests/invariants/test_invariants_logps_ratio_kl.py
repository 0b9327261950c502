"""Log-prob, ratio and KL invariants: each fires on a deliberately broken input and is silent on the correct one."""

from __future__ import annotations

import torch
from invariants_builders import VOCAB, build_step, only, with_tensors

from grpo_check.config import GRPOSpec
from grpo_check.findings import Verdict
from grpo_check.invariants import run_invariants
from grpo_check.trace.model import TraceStep


def run(step, spec, check_id):
    return only(run_invariants(step, spec, checks=[check_id]), check_id)


def gathered(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return logits.log_softmax(-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)


# --- log-probs --------------------------------------------------------------------------------------


def test_nonpositive_fires_on_sign_flipped_log_softmax():
    built = build_step(seed=1)
    ids = built.step["completion_ids"]
    logit = built.logits.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    flipped = built.logits.logsumexp(-1) - logit  # S1: logsumexp − logit
    finding = run(with_tensors(built.step, logps=flipped), built.spec, "logps.nonpositive")
    assert finding.verdict is Verdict.FAIL and finding.catalog_id == "S1"
    assert finding.where.token_id == int(ids[finding.where.row, finding.where.token])
    assert finding.details["positive_fraction"] > 0.9
    assert run(built.step, built.spec, "logps.nonpositive").verdict is Verdict.PASS


def test_nonpositive_small_positive_values_are_a_precision_warning():
    built = build_step(seed=1)
    logps = built.step["logps"].clone()
    logps[0, 0] = 0.01  # one token slightly above 0: rounding, not a sign error
    finding = run(with_tensors(built.step, logps=logps), built.spec, "logps.nonpositive")
    assert finding.verdict is Verdict.WARN and finding.catalog_id == "32"
    assert (finding.where.row, finding.where.token) == (0, 0)


def test_bf16_quantised_fires_on_bf16_log_softmax():
    built = build_step(T=8, prompts=4)
    ids = built.step["completion_ids"]
    bf16 = gathered(built.logits.bfloat16(), ids).float()  # log_softmax computed in bf16, then upcast
    finding = run(with_tensors(built.step, logps=bf16), built.spec, "logps.bf16_quantised")
    assert finding.verdict is Verdict.WARN and finding.catalog_id == "32" and finding.figure > 0.9
    assert run(built.step, built.spec, "logps.bf16_quantised").verdict is Verdict.PASS
    stored = run(with_tensors(built.step, logps=bf16.bfloat16()), built.spec, "logps.bf16_quantised")
    assert stored.verdict is Verdict.WARN


def test_logps_finite_locates_nan_and_separates_padding():
    built = build_step(seed=4)
    mask = built.step["completion_mask"].bool()
    logps = built.step["logps"].clone()
    row, token = (mask.nonzero()[5]).tolist()
    logps[row, token] = float("nan")
    finding = run(with_tensors(built.step, logps=logps), built.spec, "logps.finite")
    assert finding.verdict is Verdict.FAIL and (finding.where.row, finding.where.token) == (row, token)
    padding = built.step["logps"].clone()
    pad_row, pad_token = ((~mask).nonzero()[0]).tolist()
    padding[pad_row, pad_token] = float("-inf")
    warned = run(with_tensors(built.step, logps=padding), built.spec, "logps.finite")
    assert warned.verdict is Verdict.WARN and (warned.where.row, warned.where.token) == (pad_row, pad_token)


def test_entropies_nonnegative():
    built = build_step()
    assert run(built.step, built.spec, "logps.entropies_nonnegative").verdict is Verdict.PASS
    flipped = run(
        with_tensors(built.step, entropies=-built.step["entropies"]),
        built.spec,
        "logps.entropies_nonnegative",
    )
    assert flipped.verdict is Verdict.FAIL


# --- ratio ------------------------------------------------------------------------------------------


def _tiny_policy(dropout: float) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Embedding(VOCAB, 16), torch.nn.Dropout(dropout), torch.nn.Linear(16, VOCAB)
    )


def test_one_on_policy_fires_when_dropout_is_on():
    """TRL PR #3234: the old and the new forward differ at the first step because dropout is active."""
    built = build_step(seed=2)
    ids = built.step["completion_ids"]
    inputs = torch.roll(ids, 1, dims=1)
    policy = _tiny_policy(0.1)
    with torch.no_grad():
        policy.train()
        old, new = gathered(policy(inputs), ids), gathered(policy(inputs), ids)
        policy.eval()
        old_eval, new_eval = gathered(policy(inputs), ids), gathered(policy(inputs), ids)
    step = with_tensors(built.step, logps=new, old_logps=old, ratio=None)
    finding = run(step, built.spec, "ratio.one_on_policy")
    assert finding.verdict is Verdict.FAIL and finding.catalog_id == "15"
    assert finding.figure > finding.tolerance
    clean = with_tensors(built.step, logps=new_eval, old_logps=old_eval, ratio=None)
    assert run(clean, built.spec, "ratio.one_on_policy").verdict is Verdict.PASS


def test_one_on_policy_needs_to_know_the_optimizer_steps():
    built = build_step()
    step = with_tensors(built.step)
    del step.meta["optimizer_steps_since_old_logps"]
    assert run(step, built.spec, "ratio.one_on_policy").verdict is Verdict.INCONCLUSIVE
    # only the ratio captured: without the metadata a ratio ≠ 1 may be legitimately off-policy
    no_old = with_tensors(step, old_logps=None, ratio=torch.full_like(step["logps"], 1.3))
    assert run(no_old, built.spec, "ratio.one_on_policy").verdict is Verdict.INCONCLUSIVE
    # known on-policy (no optimizer step since the old log-probs): the captured ratio must be exactly 1
    no_old.meta["optimizer_steps_since_old_logps"] = 0
    assert run(no_old, built.spec, "ratio.one_on_policy").verdict is Verdict.FAIL


def test_moves_off_policy_fires_when_old_logps_are_taken_after_the_update():
    built = build_step(off_policy=True)
    assert run(built.step, built.spec, "ratio.moves_off_policy").verdict is Verdict.PASS
    stale = with_tensors(built.step, old_logps=built.step["logps"].clone())
    finding = run(stale, built.spec, "ratio.moves_off_policy")
    assert finding.verdict is Verdict.WARN and finding.catalog_id == "17"


def test_matches_logps_fires_when_ratio_uses_other_log_probs():
    built = build_step(off_policy=True, seed=3)
    wrong = torch.exp(built.step["logps"] - built.step["ref_logps"])  # ratio against the reference, not old
    finding = run(with_tensors(built.step, ratio=wrong), built.spec, "ratio.matches_logps")
    assert finding.verdict is Verdict.FAIL
    assert run(built.step, built.spec, "ratio.matches_logps").verdict is Verdict.PASS


def test_matches_logps_sequence_level():
    built = build_step(off_policy=True, seed=3)
    mask = built.step["completion_mask"].double()
    log_ratio = (built.step["logps"] - built.step["old_logps"]).double()
    sequence = torch.exp((log_ratio * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True)).float()
    step = with_tensors(built.step, ratio=sequence)
    spec = built.spec.replace(importance_sampling_level="sequence")
    assert run(step, spec, "ratio.matches_logps").verdict is Verdict.PASS
    assert run(with_tensors(step, ratio=sequence * 1.1), spec, "ratio.matches_logps").verdict is Verdict.FAIL


def test_clip_masks_consistent_fires_when_masks_ignore_the_advantage_sign():
    built = build_step(off_policy=True, seed=6)
    assert run(built.step, built.spec, "ratio.clip_masks_consistent").verdict is Verdict.PASS
    ratio = built.step["ratio"]
    sign_blind = with_tensors(built.step, is_low_clipped=ratio < 0.8, is_high_clipped=ratio > 1.2)
    finding = run(sign_blind, built.spec, "ratio.clip_masks_consistent")
    assert finding.verdict is Verdict.FAIL and finding.catalog_id == "22"


def test_clip_metrics_in_unit_interval():
    step = TraceStep(meta={"metrics": {"clip_ratio/region_mean": 0.12, "clip_ratio/high_max": 0.3}})
    assert run(step, None, "ratio.clip_metrics_in_unit_interval").verdict is Verdict.PASS
    step.meta["metrics"]["clip_ratio/low_mean"] = 1.7  # normalised by rows instead of tokens
    finding = run(step, None, "ratio.clip_metrics_in_unit_interval")
    assert finding.verdict is Verdict.FAIL and finding.figure == 1.7
    assert run(TraceStep(), None, "ratio.clip_metrics_in_unit_interval").verdict is Verdict.NOT_CAPTURED


def test_ratio_finite():
    built = build_step(off_policy=True)
    ratio = built.step["ratio"].clone()
    ratio[0, 0] = float("inf")
    assert run(with_tensors(built.step, ratio=ratio), built.spec, "ratio.finite").verdict is Verdict.FAIL


# --- KL ---------------------------------------------------------------------------------------------


def test_kl_nonnegative_fires_on_a_sign_error():
    built = build_step(beta=0.04)
    assert run(built.step, built.spec, "kl.nonnegative").verdict is Verdict.PASS
    finding = run(with_tensors(built.step, kl=-built.step["kl"]), built.spec, "kl.nonnegative")
    assert finding.verdict is Verdict.FAIL and finding.catalog_id == "18"
    k1 = with_tensors(built.step, kl=built.step["logps"] - built.step["ref_logps"])
    k1.meta["kl_estimator"] = "k1"
    assert run(k1, built.spec, "kl.nonnegative").details.get("applicable") is False


def test_kl_zero_at_step0_fires_on_a_wrong_reference():
    built = build_step(beta=0.04, step=0)
    ids = built.step["completion_ids"]
    same_ref = gathered(built.logits, ids)
    k3_zero = torch.zeros_like(same_ref)
    good = with_tensors(built.step, ref_logps=same_ref, kl=k3_zero)
    assert run(good, built.spec, "kl.zero_at_step0").verdict is Verdict.PASS
    finding = run(built.step, built.spec, "kl.zero_at_step0")  # the builder's reference is another model
    assert finding.verdict is Verdict.FAIL and finding.catalog_id == "20"
    kl_only = with_tensors(built.step, ref_logps=None, logps=None)
    assert run(kl_only, built.spec, "kl.zero_at_step0").verdict is Verdict.FAIL
    later = build_step(beta=0.04, step=5)
    assert run(later.step, later.spec, "kl.zero_at_step0").details.get("applicable") is False


def test_kl_spec_without_meta_estimator():
    built = build_step(beta=0.04)
    step = with_tensors(built.step, kl=built.step["logps"] - built.step["ref_logps"])
    del step.meta["kl_estimator"]
    assert run(step, GRPOSpec(kl_estimator="k1"), "kl.nonnegative").verdict is Verdict.PASS
    assert run(step, GRPOSpec(kl_estimator="k3"), "kl.nonnegative").verdict is Verdict.FAIL


def test_one_on_policy_small_precision_noise_is_a_warning():
    """bf16 forwards with different batch shapes differ by rounding (catalog 16), not by a different model."""
    built = build_step(seed=2)
    logps = built.step["logps"]
    noisy_old = logps.bfloat16().float()  # a second pass that rounds through bf16
    step = with_tensors(built.step, old_logps=noisy_old, ratio=None)
    finding = run(step, built.spec, "ratio.one_on_policy")
    assert finding.verdict is Verdict.WARN and finding.catalog_id == "16"
    step0 = with_tensors(build_step(seed=2, step=0, beta=0.04).step, ref_logps=None)
    step0.tensors["ref_logps"] = step0["logps"].bfloat16().float()
    assert run(step0, built.spec, "kl.zero_at_step0").verdict is Verdict.WARN


def test_reference_frozen_fires_when_the_reference_follows_the_policy():
    built = build_step(beta=0.04, step=3)
    assert run(built.step, built.spec, "kl.reference_frozen").verdict is Verdict.PASS
    follows = with_tensors(
        built.step, ref_logps=built.step["logps"].clone(), kl=torch.zeros_like(built.step["kl"])
    )
    finding = run(follows, built.spec, "kl.reference_frozen")
    assert finding.verdict is Verdict.WARN and finding.catalog_id == "20"
    kl_only = with_tensors(follows, ref_logps=None)
    assert run(kl_only, built.spec, "kl.reference_frozen").verdict is Verdict.WARN
    at_start = build_step(beta=0.04, step=0)
    assert run(at_start.step, at_start.spec, "kl.reference_frozen").details.get("applicable") is False
