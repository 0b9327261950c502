"""diagnose.advantages_rescaled: advantages re-normalised over the whole batch on top of the group scaling."""

from __future__ import annotations

import pytest
import torch
from diagnose_mutants import with_advantages

from grpo_check.compare import compare_step
from grpo_check.compare.synthetic import make_step
from grpo_check.config import GRPOSpec
from grpo_check.diagnose.advantages import affine_fit
from grpo_check.findings import Verdict

SPEC = GRPOSpec(num_generations=4, loss_type="grpo", max_completion_length=6, scale_rewards="group")


def rescaled(findings):
    return [f for f in findings if f.check_id == "diagnose.advantages_rescaled"]


def test_affine_fit_recovers_scale_and_shift() -> None:
    x = torch.tensor([-1.0, 0.5, 2.0, 0.0])
    assert affine_fit(3.0 * x - 0.25, x) == pytest.approx((3.0, -0.25), abs=1e-9)


def test_batch_whitening_on_top_of_group_scaling_is_named() -> None:
    step = make_step(SPEC, n_prompts=4, seed=3)
    adv = step["advantages"].double()
    step = with_advantages(step, SPEC, (adv - adv.mean()) / (adv.std() + 1e-6))
    findings = compare_step(step, SPEC)
    (diag,) = rescaled(findings)
    assert diag.verdict is Verdict.FAIL and diag.details["whitening"] is True
    assert "re-standardised over the whole batch" in diag.explanation
    explained = [f for f in findings if f.check_id == "advantages.values"]
    assert explained and all(f.likely_cause == diag.likely_cause for f in explained)


def test_a_scale_and_shift_that_is_not_whitening_is_named_with_its_figures() -> None:
    step = make_step(SPEC, n_prompts=4, seed=4)
    step = with_advantages(step, SPEC, 0.5 * step["advantages"].double() + 0.1)
    (diag,) = rescaled(compare_step(step, SPEC))
    assert diag.details["whitening"] is False
    assert abs(diag.details["scale"] - 0.5) < 1e-4 and abs(diag.details["shift"] - 0.1) < 1e-4


def test_silent_on_correct_and_on_permuted_advantages() -> None:
    step = make_step(SPEC, n_prompts=4, seed=5)
    assert not rescaled(compare_step(step, SPEC))
    permuted = with_advantages(make_step(SPEC, n_prompts=4, seed=5), SPEC, step["advantages"].flip(0))
    findings = compare_step(permuted, SPEC)
    assert not rescaled(findings)
    assert [f for f in findings if f.check_id == "diagnose.advantages_permuted"]
