from __future__ import annotations

import pytest

from grpo_check.findings import Finding, Result, Verdict, Where


def sample_findings() -> list[Finding]:
    """One finding of each verdict; the fail ones carry the details the plots read."""
    return [
        Finding(
            "logps.match_reference",
            "logps",
            Verdict.FAIL,
            figure=0.42,
            tolerance=1e-5,
            where=Where(step=1, micro_batch=0, rank=0, prompt=1, generation=2, row=5, token=3, token_id=17),
            explanation="logps differ from the reference | pipes and <html> & stuff",
            likely_cause="temperature applied on one side only",
            fix="divide the logits by the sampling temperature before log_softmax",
            catalog_id="S1",
            kind="compare",
            details={
                "token_error_map": [[0.0, 0.1, 0.0, 0.42], [0.01, None, "inf", 0.0]],
                "values": [0.9, 1.0, 1.1, 1.3, 0.7, 1.0],
                "reference_values": [1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
                "values_label": "ratio",
            },
        ),
        Finding(
            "advantages.group_sum_zero",
            "advantages",
            Verdict.FAIL,
            figure=1.66,
            tolerance=1e-6,
            where=Where(step=0, prompt=3),
            explanation="group 3 advantages sum to 1.66 instead of 0",
            likely_cause="generations grouped with repeat instead of repeat_interleave",
            fix="group rows with repeat_interleave(G)",
            catalog_id="6",
            details={
                "histogram": {"edges": [-2, -1, 0, 1, 2], "counts": [1, 3, 3, 1], "label": "advantages"}
            },
        ),
        Finding(
            "ratio.first_step_one",
            "ratio",
            Verdict.WARN,
            figure=3e-3,
            tolerance=1e-3,
            where=Where(step=0),
            explanation="ratio differs from 1 at an on-policy step",
            fix="disable dropout",
        ),
        Finding(
            "advantages.std_convention",
            "advantages",
            Verdict.CONVENTION,
            figure=0.866,
            where=Where(step=0),
            explanation="population std instead of sample std",
        ),
        Finding("kl.match_reference", "kl", Verdict.NOT_CAPTURED, explanation="kl was not recorded"),
        Finding("loss.match_reference", "loss", Verdict.INCONCLUSIVE, explanation="every row masked"),
        Finding(
            "loss.finite",
            "loss",
            Verdict.PASS,
            figure=0.0,
            tolerance=0.0,
            where=Where(step=0),
            explanation="loss finite",
        ),
    ]


@pytest.fixture
def mixed_result() -> Result:
    return Result(
        findings=sample_findings(),
        metadata={"source": "traces/run1", "tolerances": {"logps": {"atol": 1e-5}}, "config": {"beta": 0.0}},
    )


@pytest.fixture
def clean_result() -> Result:
    return Result(findings=[f for f in sample_findings() if f.verdict in (Verdict.PASS, Verdict.CONVENTION)])
