"""diagnose.old_is_ref: the old log-probs handed to the loss are the reference model's."""

from __future__ import annotations

import torch
from diagnose_mutants import recompute_downstream

from grpo_check.compare import compare_step
from grpo_check.compare.synthetic import TinyLM, make_step
from grpo_check.config import GRPOSpec

SPEC = GRPOSpec(num_generations=4, loss_type="bnpo", max_completion_length=6, beta=0.04)


def on_policy_step(old_from_ref: bool):
    model = TinyLM(seed=0)
    step = make_step(SPEC, seed=0, model=model, off_policy=0.0, sampler_noise=0.0)
    step.meta["optimizer_steps_since_old_logps"] = 0  # sampled at the current weights
    g = torch.Generator().manual_seed(3)
    step.tensors["ref_logps"] = (step["logps"] - 0.2 * torch.rand(step["logps"].shape, generator=g)).float()
    step.tensors["old_logps"] = step["ref_logps"].clone() if old_from_ref else step["logps"].clone()
    return recompute_downstream(step, SPEC), model


def named(findings):
    return [f for f in findings if f.check_id == "diagnose.old_is_ref"]


def test_old_logps_equal_to_the_reference_models_are_named() -> None:
    step, model = on_policy_step(old_from_ref=True)
    findings = compare_step(step, SPEC, model=model)
    (diag,) = named(findings)
    assert "reference model's log-probs" in diag.explanation
    old = [f for f in findings if f.check_id == "logps.old_model"]
    assert old and old[0].verdict.value == "fail" and old[0].likely_cause == diag.likely_cause


def test_old_logps_from_the_policy_are_silent() -> None:
    step, model = on_policy_step(old_from_ref=False)
    findings = compare_step(step, SPEC, model=model)
    assert not named(findings)
    assert not [f for f in findings if f.check_id == "logps.old_model" and f.verdict.value == "fail"]
