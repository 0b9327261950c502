"""Zoo cases whose bug sits in a loss branch real batches never reach: every check on the captured steps passes,
probing the trainer's own loss code finds it (stage, diagnosis); the control exercising the same branches is clean."""

from __future__ import annotations

import pytest

pytest.importorskip("trl")

from grpo_check.findings import Verdict


@pytest.mark.slow
def test_rare_branch_mutants_are_missed_by_captured_steps_and_found_by_probing():
    from grpo_check.zoo.catalog import select_cases
    from grpo_check.zoo.scorecard import evaluate_case

    for case_id in ("trl-21-lower-clip-dropped", "trl-21-delta-ignored"):
        (case,) = select_cases([case_id])
        score, result = evaluate_case(case)
        assert score.error is None, score.error
        assert score.detected and score.localised and score.diagnosed, score.to_dict()
        captured = [f for f in result.failures if not f.check_id.startswith("probe.")]
        assert not captured, [f.message() for f in captured]  # the captured on-policy steps look correct
        assert any(f.verdict is Verdict.PASS and f.check_id == "grad.logps_grad" for f in result.findings)
        assert {f.check_id for f in result.failures} == {"probe.loss", "probe.logps_grad"}


@pytest.mark.slow
def test_rewritten_clip_control_is_clean():
    from grpo_check.zoo.catalog import select_cases
    from grpo_check.zoo.scorecard import evaluate_case

    (case,) = select_cases(["ctl-trl-clip-rewritten"])
    score, result = evaluate_case(case)
    assert score.error is None and not score.false_positive, score.to_dict()
    assert any(f.check_id == "probe.logps_grad" and f.verdict is Verdict.PASS for f in result.findings)
