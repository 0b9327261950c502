"""The history zoo's scoring and its cases (the runs on other TRL releases are `grpo-check zoo --history`)."""

from __future__ import annotations

import pytest

from grpo_check.trl.versions import parse_version
from grpo_check.zoo.history import HISTORY_CASES, select_history
from grpo_check.zoo.history.run import HistoryCard, HistoryOutcome, ReleaseRun


def test_each_case_runs_the_last_buggy_release_and_a_fixing_one():
    for case in HISTORY_CASES:
        assert case.bug.affects(case.buggy) and not case.bug.affects(case.fixed)
        assert parse_version(case.fixed) >= parse_version(case.bug.fixed_in)
        # what the captured batches show: unscored rows where asked for; the demo's prompts are left-padded
        observed = {
            "unscorable_rows": bool(case.settings.get("unscorable_every")),
            "left_padded_prompts": True,
        }
        assert case.bug.trigger({"temperature": 1.0, **case.settings, **observed})  # the settings trigger it
    assert [c.id for c in select_history(["dapo"])] == ["trl-dapo-normaliser-spg"]
    assert select_history(["nothing"]) == []


def _outcome(buggy: ReleaseRun, fixed: ReleaseRun) -> HistoryOutcome:
    return HistoryOutcome(select_history(["trl-temperature-logps"])[0], buggy, fixed)


FOUND = ReleaseRun("0.15.2", failing=["logps.model", "trl.shipped_bug.trl-temperature-logps"], first_stage="logps",
                   named=["trl-temperature-logps"])  # fmt: skip
CLEAN = ReleaseRun("0.16.1")


def test_a_case_scores_only_when_found_localised_named_and_clean_on_the_fix():
    assert _outcome(FOUND, CLEAN).scored
    card = HistoryCard([_outcome(FOUND, CLEAN)])
    assert card.all_scored() and "1/1 shipped bugs" in card.render("text")
    assert f"| {select_history(['trl-temperature-logps'])[0].bug.title} |" in card.render("md")


@pytest.mark.parametrize(
    ("buggy", "fixed", "missing"),
    [
        (ReleaseRun("0.15.2"), CLEAN, "detected"),  # the buggy release came out clean
        (ReleaseRun("0.15.2", failing=["loss.value"], first_stage="advantages", named=["trl-temperature-logps"]),
         CLEAN, "localised"),
        (ReleaseRun("0.15.2", failing=["logps.model"], first_stage="logps"), CLEAN, "diagnosed"),
        (FOUND, ReleaseRun("0.16.1", failing=["logps.model"], first_stage="logps"), "fixed_clean"),
        (FOUND, ReleaseRun("0.16.1", error="pip install trl==0.16.1 failed"), "fixed_clean"),
    ],
)  # fmt: skip
def test_a_case_that_misses_any_part_does_not_score(buggy, fixed, missing):
    outcome = _outcome(buggy, fixed)
    assert not getattr(outcome, missing) and not outcome.scored
    assert not HistoryCard([outcome]).all_scored()


@pytest.mark.slow
@pytest.mark.parametrize("case_id", ["trl-dapo-normaliser-spg", "trl-unscorable-rows-counted"])
def test_a_case_is_clean_on_a_release_that_has_the_fix(case_id):
    trl = pytest.importorskip("trl")
    case = select_history([case_id])[0]
    if case.bug.affects(trl.__version__) or parse_version(trl.__version__) < parse_version(case.bug.fixed_in):
        pytest.skip(f"TRL {trl.__version__} is not a fixing release")
    from grpo_check.zoo.history.run import run_case_here

    outcome = run_case_here(case)
    assert outcome["failing"] == [] and outcome["named"] == []


def test_unscorable_every_makes_every_kth_completion_unscored():
    from grpo_check.demo.portable import _unscorable

    def reward(prompts, completions, **_):
        return [1.0] * len(completions)

    wrapped = _unscorable(reward, 4)
    assert wrapped(["p"] * 8, ["c"] * 8) == [1.0, 1.0, 1.0, None, 1.0, 1.0, 1.0, None]
    assert wrapped.__name__ == "reward"


def test_zoo_history_lists_its_cases_and_refuses_an_unknown_one_in_one_line():
    from typer.testing import CliRunner

    from grpo_check.cli import app

    runner = CliRunner()
    listed = runner.invoke(app, ["zoo", "--history", "--list"])
    assert listed.exit_code == 0
    for case in HISTORY_CASES:
        assert case.id in listed.output and case.buggy in listed.output and case.fixed in listed.output
    unknown = runner.invoke(app, ["zoo", "--history", "--only", "no-such-bug"])
    assert unknown.exit_code == 2 and "no history case matches" in unknown.output
    assert len(unknown.output.strip().splitlines()) == 1
