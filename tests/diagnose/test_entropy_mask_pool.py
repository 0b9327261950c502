"""diagnose.entropy_mask_pool: the high-entropy mask's quantile taken over padded positions too."""

from __future__ import annotations

import torch

from grpo_check.compare import compare_step
from grpo_check.compare.reference_inputs import reference_downstream
from grpo_check.compare.synthetic import make_step
from grpo_check.config import GRPOSpec
from grpo_check.diagnose.entropy import padded_pool_mask
from grpo_check.reference.loss import high_entropy_mask

SPEC = GRPOSpec(num_generations=4, loss_type="grpo", max_completion_length=6, top_entropy_quantile=0.4)


def step_with_mask(wrong: bool):
    """A step whose trainer gradient is the reference's without an entropy mask, times the chosen mask."""
    step = make_step(SPEC.replace(top_entropy_quantile=1.0), n_prompts=4, seed=7, off_policy=0.0)
    mask = step["completion_mask"]
    g = torch.Generator().manual_seed(1)
    entropies = (2.0 + torch.rand(mask.shape, generator=g, dtype=torch.float64)) * mask  # 0 on padding
    step.tensors["entropies"] = entropies.float()
    keep = (padded_pool_mask if wrong else high_entropy_mask)(entropies, mask, SPEC.top_entropy_quantile)
    unmasked = reference_downstream(step, SPEC.replace(top_entropy_quantile=1.0))
    assert unmasked is not None
    step.tensors["logps_grad"] = (unmasked["logps_grad"] * keep).float()
    for name in ("per_token_loss", "loss"):
        step.tensors.pop(name, None)
    return step, keep


def named(findings):
    return [f for f in findings if f.check_id == "diagnose.entropy_mask_pool"]


def test_quantile_over_padded_positions_is_named() -> None:
    step, _ = step_with_mask(wrong=True)
    findings = compare_step(step, SPEC)
    (diag,) = named(findings)
    assert diag.stage == "loss" and diag.details["tokens_differing"] > 0
    grad = [f for f in findings if f.check_id == "grad.logps_grad"]
    assert grad and grad[0].verdict.value == "fail" and grad[0].likely_cause == diag.likely_cause


def test_quantile_over_completion_tokens_is_silent() -> None:
    step, _ = step_with_mask(wrong=False)
    findings = compare_step(step, SPEC)
    assert not named(findings)
    assert not [f for f in findings if f.check_id == "grad.logps_grad" and f.verdict.value == "fail"]
