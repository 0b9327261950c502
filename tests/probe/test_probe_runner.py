"""Probing a loss callable: silent on correct losses, firing (localised, diagnosed) on a bug in each branch."""

from __future__ import annotations

import pytest
import torch
from _handwritten_loss import handwritten_loss

from grpo_check.config import GRPOSpec
from grpo_check.findings import InputError, Verdict
from grpo_check.probe import build_probes, reference_loss_fn, run_probes
from grpo_check.probe.branches import BRANCHES, branch_masks
from grpo_check.trace.model import TraceStep

SPECS = {
    "grpo-gas2": GRPOSpec(num_generations=4, loss_type="grpo", gradient_accumulation_steps=2),
    "dapo-delta-kl-gas2-spg4": GRPOSpec(
        num_generations=4,
        loss_type="dapo",
        epsilon_high=0.28,
        delta=1.5,
        beta=0.04,
        gradient_accumulation_steps=2,
        steps_per_generation=4,
    ),
    "bnpo-sequence-dual": GRPOSpec(
        num_generations=4, loss_type="bnpo", importance_sampling_level="sequence", dual_clip=3.0
    ),
    "dr_grpo-truncation": GRPOSpec(
        num_generations=4, loss_type="dr_grpo", max_completion_length=8, mask_truncated_completions=True
    ),
    "luspo": GRPOSpec(num_generations=4, loss_type="luspo", beta=0.1, use_bias_correction_kl=False),
    "cispo-sampler": GRPOSpec(
        num_generations=4,
        loss_type="cispo",
        epsilon_high=5.0,
        sampler_is_correction=True,
        sampler_is_mode="token_truncate",
    ),
    "sapo-entropy-bonus": GRPOSpec(num_generations=4, loss_type="sapo", entropy_coef=0.01),
    "dapo-masks-2proc": GRPOSpec(
        num_generations=4,
        loss_type="dapo",
        top_entropy_quantile=0.4,
        off_policy_mask_threshold=0.3,
        num_processes=2,
    ),
    "vespo": GRPOSpec(num_generations=4, loss_type="vespo"),
}


def _failing_variants(outcome) -> set[str | None]:
    return {f.details.get("variant") for f in outcome.findings if f.verdict is Verdict.FAIL}


@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_reference_loss_passes_every_probe(name, dtype):
    spec = SPECS[name]
    outcome = run_probes(reference_loss_fn(spec, dtype=dtype), spec, tool_mask=True)
    assert outcome.ok, [f.message() for f in outcome.findings if f.verdict is not Verdict.PASS]
    assert {f.check_id for f in outcome.findings} == {"probe.loss", "probe.logps_grad"}
    assert outcome.findings[0].details["branches"] == outcome.branches


@pytest.mark.parametrize("name", sorted(n for n in SPECS if n != "vespo"))
def test_handwritten_correct_loss_passes_every_probe(name):
    spec = SPECS[name]
    outcome = run_probes(handwritten_loss(spec), spec, tool_mask=True)
    assert outcome.ok, [f.message() for f in outcome.findings if f.verdict is not Verdict.PASS]


def test_probes_reach_every_branch_of_the_configured_loss():
    expected = {
        "dapo-delta-kl-gas2-spg4": {
            "ratio.on_policy", "clip.lower_binds", "clip.lower_free", "clip.inside", "clip.upper_binds",
            "clip.upper_free", "delta.caps", "advantage.zero", "mask.padding", "mask.all_masked_row",
            "mask.single_token_row", "mask.truncated_row", "mask.tool", "kl.term", "kl.ratio_weighted",
            "normaliser.token_mean_global", "normaliser.accumulation", "normaliser.short_window",
            "normaliser.steps_per_generation",
        },
        "bnpo-sequence-dual": {"ratio.sequence_level", "dual_clip.caps", "clip.lower_binds", "clip.upper_binds",
                               "normaliser.token_mean_local"},
        "cispo-sampler": {"cispo.capped", "cispo.below_cap", "sampler_is.zeroed", "sampler_is.weighted"},
        "sapo-entropy-bonus": {"sapo.positive", "sapo.negative", "sapo.far", "entropy.bonus"},
        "dapo-masks-2proc": {"entropy_mask.keeps", "entropy_mask.drops", "off_policy.drops",
                             "off_policy.keeps_positive", "off_policy.keeps_close", "normaliser.processes"},
        "vespo": {"vespo.positive", "vespo.negative", "vespo.clamped"},
    }  # fmt: skip
    for name, branches in expected.items():
        outcome = run_probes(reference_loss_fn(SPECS[name]), SPECS[name], tool_mask=True)
        assert branches <= set(outcome.branches), (name, branches - set(outcome.branches))
        assert set(outcome.branches) <= set(BRANCHES)
        assert set().union(*outcome.per_probe.values()) == set(outcome.branches)
        assert outcome.findings[0].details["per_probe"] == outcome.per_probe
    grid = run_probes(reference_loss_fn(SPECS["grpo-gas2"]), SPECS["grpo-gas2"]).per_probe["ratio-grid"]
    assert {"clip.lower_binds", "clip.upper_binds", "advantage.zero"} <= set(
        grid
    ) and "mask.padding" not in grid


# bug -> (spec, the variant that must be diagnosed or None, a branch the worst differing element must be in)
PLANTED = {
    "lower_clip_dropped": ("grpo-gas2", "clip.lower_missing", "clip.lower_binds"),
    "upper_clip_dropped": ("grpo-gas2", "clip.upper_missing", "clip.upper_binds"),
    "epsilon_high_ignored": ("dapo-delta-kl-gas2-spg4", "clip.upper_uses_epsilon_low", "clip.inside"),
    "delta_ignored": ("dapo-delta-kl-gas2-spg4", "delta.ignored", "delta.caps"),
    "dual_clip_ignored": ("bnpo-sequence-dual", "dual_clip.ignored", "dual_clip.caps"),
    "token_level_ratio": ("bnpo-sequence-dual", "ratio.level_swapped", "ratio.sequence_level"),
    "kl_k1": ("dapo-delta-kl-gas2-spg4", "kl.k1", "kl.term"),
    "entropy_mask_ignored": ("dapo-masks-2proc", "entropy_mask.ignored", "entropy_mask.drops"),
    "off_policy_mask_ignored": ("dapo-masks-2proc", "off_policy.ignored", "off_policy.drops"),
    "sampler_weight_ignored": ("cispo-sampler", "sampler_is.ignored", "sampler_is.zeroed"),
    "normaliser_counts_padding": ("grpo-gas2", "normaliser.counts_padding", None),
    "not_divided_by_accumulation": ("grpo-gas2", "normaliser.not_divided_by_accumulation", None),
    "steps_per_generation_ignored": (
        "dapo-delta-kl-gas2-spg4",
        "normaliser.steps_per_generation_ignored",
        None,
    ),
    "all_masked_row_nan": ("grpo-gas2", None, "mask.all_masked_row"),
    "padding_not_masked": ("grpo-gas2", None, "mask.padding"),
    "tool_mask_ignored": ("grpo-gas2", "mask.tool_ignored", "mask.tool"),
    "normaliser_counts_tool_tokens": ("grpo-gas2", "normaliser.counts_masked_tokens", None),
    "cispo_cap_ignored": ("cispo-sampler", "cispo.cap_ignored", "cispo.capped"),
    "sapo_temperatures_swapped": ("sapo-entropy-bonus", None, "sapo.negative"),
    "detached": ("grpo-gas2", "grad.detached", None),
}


@pytest.mark.parametrize("bug", sorted(PLANTED))
def test_planted_bug_in_each_branch_is_found_localised_and_diagnosed(bug):
    name, variant, branch = PLANTED[bug]
    spec = SPECS[name]
    outcome = run_probes(handwritten_loss(spec, (bug,)), spec, tool_mask=True)
    failures = outcome.failures
    assert failures, f"{bug} passed every probe"
    assert {f.stage for f in failures} <= {"loss", "grad"}
    assert {f.check_id for f in failures} <= {"probe.loss", "probe.logps_grad"}
    if variant is not None:
        assert variant in _failing_variants(outcome), (bug, _failing_variants(outcome))
    if branch is not None:
        grads = [f for f in failures if f.check_id == "probe.logps_grad"]
        assert any(branch in f.details["branches_differing"] for f in grads), [
            f.details["branches_differing"] for f in grads
        ]


def test_failure_message_names_probe_element_branch_and_cause():
    spec = SPECS["grpo-gas2"]
    outcome = run_probes(handwritten_loss(spec, ("lower_clip_dropped",)), spec)
    grad = next(
        f for f in outcome.failures if f.check_id == "probe.logps_grad" and f.details["probe"] == "ratio-grid"
    )
    row, token = grad.where.row, grad.where.token
    probe = next(p for p in build_probes(spec) if p.name == "ratio-grid")
    assert bool(branch_masks(probe, spec)["clip.lower_binds"][row, token])
    assert grad.details["reference"] == 0.0 and grad.details["trainer"] != 0.0  # the clip binds: no gradient
    text = grad.message()
    for part in (
        "probe 'ratio-grid'",
        f"row {row}, token {token}",
        "clip.lower_binds",
        "allowed",
        "lower clip bound",
    ):
        assert part in text, part
    assert grad.catalog_id == "21" and grad.fix


def test_on_policy_loss_bugs_show_in_the_gradient_even_when_the_loss_is_zero():
    spec = GRPOSpec(num_generations=4, loss_type="dapo")
    outcome = run_probes(handwritten_loss(spec, ("detached",)), spec)
    on_policy = [f for f in outcome.failures if f.details["probe"] == "on-policy"]
    assert [f.check_id for f in on_policy] == ["probe.logps_grad"]  # loss ≈ 0 agrees; its gradient does not


def test_probes_built_from_a_captured_step_keep_its_shape_dtype_and_ids_and_use_no_rng():
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    step = TraceStep(
        tensors={
            "completion_mask": mask,
            "completion_ids": torch.arange(15).reshape(3, 5),
            "logps": torch.full((3, 5), -0.7),
            "prompt_ids": torch.ones(3, 4, dtype=torch.long),
        },
        meta={"gradient_accumulation_steps": 2, "steps_per_generation": 4},
    )
    spec = GRPOSpec(
        num_generations=4, loss_type="dapo", gradient_accumulation_steps=2, steps_per_generation=4
    )
    state = torch.random.get_rng_state()
    probes = build_probes(spec, step)
    assert torch.equal(state, torch.random.get_rng_state())
    for probe in probes:
        rows, length = probe.shape
        assert length == 5 and rows >= 3
        assert probe["logps"].dtype == torch.float32
        assert torch.equal(probe["completion_ids"][:3], step["completion_ids"])
        assert probe.meta["steps_per_generation"] == 4
    on_policy = probes[0]
    assert torch.equal(on_policy["completion_mask"], mask) and "old_logps" not in on_policy
    assert {p.meta["gradient_accumulation_steps"] for p in probes} == {1, 2}
    assert run_probes(reference_loss_fn(spec, dtype=torch.float32), spec, step).ok


def test_a_loss_that_raises_is_inconclusive_not_ok():
    spec = GRPOSpec(num_generations=4, loss_type="grpo")

    def broken(probe):
        if probe.name == "masks":
            raise RuntimeError("shape mismatch in my loss")
        return reference_loss_fn(spec)(probe)

    outcome = run_probes(broken, spec)
    assert not outcome.ok and "masks" in outcome.not_run
    inconclusive = [f for f in outcome.findings if f.verdict is Verdict.INCONCLUSIVE]
    assert len(inconclusive) == 1 and "shape mismatch" in inconclusive[0].explanation


def test_a_loss_callable_that_returns_no_leaf_is_refused():
    spec = GRPOSpec(num_generations=4, loss_type="grpo")
    with pytest.raises(InputError, match="leaf"):
        run_probes(lambda probe: (torch.tensor(0.0), probe["logps"]), spec)


def test_testing_probe_loss_asserts_in_torch_testing_style():
    from grpo_check.testing import probe_loss, probe_loss_findings

    spec = SPECS["dapo-delta-kl-gas2-spg4"]
    assert probe_loss(handwritten_loss(spec), spec).ok
    with pytest.raises(AssertionError) as caught:
        probe_loss(handwritten_loss(spec, ("delta_ignored",)), spec)
    text = str(caught.value)
    assert "probe.logps_grad" in text and "delta.caps" in text and "allowed" in text and "delta" in text
    assert all(f.verdict is not Verdict.PASS for f in caught.value.findings)
    findings = probe_loss_findings(handwritten_loss(spec, ("delta_ignored",)), spec)
    assert any(f.verdict is Verdict.FAIL and f.stage == "grad" for f in findings)
