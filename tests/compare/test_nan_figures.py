"""A comparison whose figure is NaN reports no figure (JSON has no NaN); every other figure is kept as it is."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from grpo_check.compare import stages
from grpo_check.compare.synthetic import make_step
from grpo_check.compare.tolerances import TolerancePolicy
from grpo_check.config import GRPOSpec
from grpo_check.findings import Finding, Verdict


@pytest.mark.parametrize(
    ("figure", "kept"),
    [
        (math.nan, None),
        (np.float64("nan"), None),  # a float subclass
        (-0.0, -0.0),
        (math.inf, math.inf),
        (3, 3),
        (None, None),
        (np.float32(1.5), np.float32(1.5)),  # not a float: kept
    ],
)
def test_nan_figures_become_none(monkeypatch: pytest.MonkeyPatch, figure: object, kept: object) -> None:
    def advantage_findings(*args: object) -> list[Finding]:
        return [
            Finding(check_id="advantages.values", stage="advantages", verdict=Verdict.PASS, figure=figure)
        ]

    monkeypatch.setattr(stages, "advantage_findings", advantage_findings)
    spec = GRPOSpec(num_generations=4, loss_type="grpo", beta=0.04)
    findings, _ = stages.compare_stages(make_step(spec), spec, TolerancePolicy(), end_to_end=False)
    got = next(f.figure for f in findings if f.check_id == "advantages.values")
    assert repr(got) == repr(kept) and type(got) is type(kept)


def test_a_nan_loss_reports_no_figure() -> None:
    spec = GRPOSpec(num_generations=4, loss_type="grpo", beta=0.04)
    step = make_step(spec)
    step.tensors["loss"] = torch.tensor(math.nan)
    findings, _ = stages.compare_stages(step, spec, TolerancePolicy())
    loss = next(f for f in findings if f.check_id == "loss.value")
    assert loss.verdict is Verdict.FAIL
    assert all(f.figure is None or f.figure == f.figure for f in findings)
