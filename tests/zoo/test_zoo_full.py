"""The whole zoo, scored: the issue's targets as assertions (slow: every mutant and control runs, ~1-3 min).

A failure here is evidence for the detector owners, not noise: the message lists each missed, mislocalised or
misdiagnosed mutant and each false positive with what grpo-check reported instead.
"""

from __future__ import annotations

import pytest

from grpo_check.zoo.scorecard import TARGETS, describe_score, run_scorecard

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def card():
    return run_scorecard()


def _problems(card, predicate) -> str:
    return "\n".join(describe_score(s) for s in card.scores if predicate(s))


def test_no_false_positives(card):
    assert card.totals()["false_positives"] == 0, _problems(card, lambda s: s.false_positive)


def test_skillsbench_scenarios_find_s1_s2_s3_each_in_its_own_stage(card):
    for case_id in ("skillsbench-S1-S2-S3", "trl-skillsbench-S1-S2-S3"):
        score = next(s for s in card.scores if s.case.id == case_id)
        assert score.error is None, score.error
        for bug in score.bugs:
            assert bug.stage_failed, (
                f"{case_id}: no failure in stage {bug.bug.stage} for {bug.bug.catalog_id}"
            )
            assert bug.diagnosed, f"{case_id}: {bug.bug.catalog_id} not named ({describe_score(score)})"
        assert score.first_stage == "batch", describe_score(score)


def test_every_mutant_detected(card):
    assert card.totals()["recall"] >= TARGETS["recall"], _problems(
        card, lambda s: s.case.is_mutant and not s.detected
    )


def test_localisation_target(card):
    assert card.totals()["localisation"] >= TARGETS["localisation"], _problems(
        card, lambda s: s.case.is_mutant and not s.localised
    )


def test_diagnosis_target(card):
    assert card.totals()["diagnosis"] >= TARGETS["diagnosis"], _problems(
        card, lambda s: s.case.is_mutant and not s.diagnosed
    )
