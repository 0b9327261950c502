"""Detectors in ON_FAILURE_ONLY are skipped while no comparison fails: they must say nothing then, whatever the
tensors hold, and still run (and explain) when one fails."""

from __future__ import annotations

import dataclasses

import diagnose_mutants as mutants
import pytest

import grpo_check.diagnose as diagnose_module
from grpo_check._step_cache import step_cache
from grpo_check.compare import compare_step
from grpo_check.compare.stages import compare_stages
from grpo_check.compare.synthetic import make_step
from grpo_check.compare.tolerances import TolerancePolicy
from grpo_check.config import GRPOSpec
from grpo_check.findings import Verdict

_SPECS = (
    GRPOSpec(num_generations=4, loss_type="grpo", beta=0.04),
    GRPOSpec(num_generations=4, loss_type="dapo", beta=0.0),
)


def _broken_steps(spec: GRPOSpec):
    yield "correct", make_step(spec)
    yield "nan reward leak", mutants.nan_reward_leak(spec)
    yield "gradient x4", mutants.grad_scaled(spec, 4.0)
    yield "detached", mutants.detached(spec)
    yield "regrouped", mutants.regrouped(spec)
    positive = make_step(spec)
    positive.tensors["logps"] = -positive["logps"]
    yield "positive logps", positive


@pytest.mark.parametrize("spec", _SPECS, ids=lambda s: f"{s.loss_type}-beta{s.beta}")
def test_skipped_detectors_say_nothing_while_nothing_fails(spec: GRPOSpec, monkeypatch) -> None:
    for label, step in _broken_steps(spec):
        with step_cache(step):
            findings, reference = compare_stages(step, spec, TolerancePolicy())
            passing = [
                dataclasses.replace(f, verdict=Verdict.PASS, details=dict(f.details)) for f in findings
            ]
            before = [dataclasses.asdict(f) for f in passing]
            for detector in diagnose_module.ON_FAILURE_ONLY:
                dx = diagnose_module.Diagnosis(
                    step=step,
                    spec=spec,
                    reference=dict(reference.tensors),
                    findings=passing,
                    ctx=diagnose_module._context.StepContext(),
                    downstream=lambda variant=None, **overrides: None,
                )
                assert detector(dx) == [], (label, detector.__name__)
            assert [dataclasses.asdict(f) for f in passing] == before, label


def test_skipped_detectors_still_explain_a_failure() -> None:
    spec = GRPOSpec(num_generations=4, loss_type="grpo", gradient_accumulation_steps=4)
    step = make_step(spec)
    step.tensors["logps_grad"] = (
        step["logps_grad"] * 4
    )  # loss not divided by GAS: an ON_FAILURE_ONLY detector
    diagnoses = [f for f in compare_step(step, spec) if f.kind == "diagnosis"]
    assert [f.catalog_id for f in diagnoses] == ["4"]
    assert {f.check_id for f in diagnoses} <= {"diagnose.normalizer_factor", "diagnose.objective_variant"}
    clean = [f for f in compare_step(make_step(spec), spec) if f.kind == "diagnosis"]
    assert clean == []
