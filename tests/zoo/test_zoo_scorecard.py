"""Scoring logic (pure, on hand-made Results): detection, localisation, diagnosis and false positives."""

from __future__ import annotations

from grpo_check.findings import Finding, Result, Verdict, Where
from grpo_check.zoo.catalog import Bug, Case
from grpo_check.zoo.scorecard import Scorecard, score_result


def _case(*bugs: Bug, id: str = "m") -> Case:
    return Case(id=id, title=id, bugs=tuple(bugs), pipeline="loop", make=lambda: None)


def _finding(
    stage: str,
    verdict: Verdict = Verdict.FAIL,
    catalog_id: str | None = None,
    cause: str | None = None,
    step: int = 0,
):
    return Finding(
        check_id=f"{stage}.x",
        stage=stage,
        verdict=verdict,
        where=Where(step=step),
        catalog_id=catalog_id,
        likely_cause=cause,
    )


def test_mutant_found_in_its_stage_and_named_scores_on_all_three():
    case = _case(Bug("S1", "logps"))
    result = Result([_finding("logps", catalog_id="S1"), _finding("loss", catalog_id=None)])
    score = score_result(case, result)
    assert (score.detected, score.localised, score.diagnosed) == (True, True, True)


def test_first_divergence_in_a_later_stage_is_not_localised():
    case = _case(Bug("4", "loss"))
    score = score_result(case, Result([_finding("grad", catalog_id="4")]))
    assert score.detected and score.diagnosed and not score.localised
    assert score.first_stage == "grad"


def test_wrong_catalog_id_is_not_a_diagnosis_but_a_keyword_in_the_cause_is():
    assert not score_result(_case(Bug("14", "logps")), Result([_finding("logps", catalog_id="1")])).diagnosed
    keyword_bug = Bug(None, "logps", keywords=("temperature",))
    found = Result([_finding("logps", catalog_id="1", cause="Temperature not applied to the trainer logits")])
    assert score_result(_case(keyword_bug), found).diagnosed


def test_accepted_alternative_ids_count():
    bug = Bug("1", "logps", also=("26",))
    assert score_result(_case(bug), Result([_finding("logps", catalog_id="26")])).diagnosed


def test_a_warning_is_not_a_detection_but_is_reported():
    score = score_result(
        _case(Bug("16", "logps")), Result([_finding("ratio", Verdict.WARN, catalog_id="16")])
    )
    assert not score.detected and score.warned and score.diagnosed


def test_multi_bug_case_needs_a_failure_in_every_bug_stage_and_every_name():
    case = _case(Bug("S1", "logps"), Bug("S2", "advantages"), Bug("S3", "batch"))
    all_found = Result(
        [
            _finding("batch", catalog_id="S3"),
            _finding("advantages", catalog_id="S2"),
            _finding("logps", catalog_id="S1"),
        ]
    )
    assert score_result(case, all_found).localised and score_result(case, all_found).diagnosed
    s2_missing = Result([_finding("batch", catalog_id="S3"), _finding("logps", catalog_id="S1")])
    score = score_result(case, s2_missing)
    assert not score.localised and not score.diagnosed
    assert [b.diagnosed for b in score.bugs] == [True, False, True]


def test_controls_fail_only_on_fail_findings():
    control = _case(id="c")
    assert not score_result(control, Result([_finding("logps", Verdict.WARN)])).false_positive
    assert not score_result(control, Result([_finding("advantages", Verdict.CONVENTION)])).false_positive
    assert score_result(control, Result([_finding("loss")])).false_positive
    assert score_result(control, Result(), error="boom").false_positive


def test_totals_and_targets():
    good = score_result(_case(Bug("S1", "logps")), Result([_finding("logps", catalog_id="S1")]))
    missed = score_result(_case(Bug("S2", "advantages"), id="m2"), Result())
    clean = score_result(_case(id="c"), Result([_finding("logps", Verdict.PASS)]))
    card = Scorecard([good, clean])
    assert card.targets_met() and card.exit_code() == 0
    card = Scorecard([good, missed, clean])
    totals = card.totals()
    assert totals["recall"] == 0.5 and totals["false_positives"] == 0
    assert not card.targets_met() and card.exit_code() == 1
    assert card.to_dict()["cases"][1]["detected"] is False
