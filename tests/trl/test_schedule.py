"""Which steps the live capture checks: every N-th, or as often as an overhead budget allows."""

from __future__ import annotations

import pytest

from grpo_check.findings import InputError
from grpo_check.trl.schedule import FIRST_INTERVAL, MAX_INTERVAL, CheckSchedule, interval_for_budget


def test_every_n_checks_the_multiples_of_n_whatever_the_cost() -> None:
    schedule = CheckSchedule(every=3)
    assert [step for step in range(10) if schedule.due(step)] == [0, 3, 6, 9]
    schedule.end_step(0, seconds=10.0, checking_seconds=9.0)  # costly, but every=3 is a fixed schedule
    assert schedule.interval == 3 and schedule.due(3)


def test_interval_for_budget_is_the_fewest_steps_that_keep_checking_under_the_budget() -> None:
    # 0.3 s per check on 1 s steps: 6 steps give 0.3 / 6 = 5 %; 5 steps would give 6 %
    assert interval_for_budget(0.3, 1.0, 0.05) == 6
    assert interval_for_budget(0.01, 1.0, 0.05) == 1  # cheap: every step
    assert interval_for_budget(1e3, 1.0, 0.01) == MAX_INTERVAL  # never fewer than one check per 1000 steps
    assert interval_for_budget(0.3, 0.0, 0.05) == 1  # no step time known yet


def _run(
    schedule: CheckSchedule, steps: int, base: float, check: float, first_extra: float = 0.0
) -> list[int]:
    """Drive a schedule: each step takes ``base`` seconds plus ``check`` when checked (plus ``first_extra``
    on the first check); returns the checked steps."""
    checked = []
    for step in range(steps):
        cost = 0.0
        if schedule.due(step):
            checked.append(step)
            cost = check + (first_extra if len(checked) == 1 else 0.0)
        schedule.end_step(step, seconds=base + cost, checking_seconds=cost)
    return checked


def test_a_budget_spaces_the_checks_so_their_cost_stays_under_it() -> None:
    schedule = CheckSchedule(budget=0.05)
    checked = _run(schedule, 96, base=1.0, check=0.3)  # 16 whole cycles of 6 steps
    assert checked[:3] == [0, 6, 12]  # 0.3 s per check, 1 s steps: one check in 6 steps
    summary = schedule.summary()
    assert summary["checked_steps"] == len(checked) and summary["interval"] == 6
    assert summary["overhead"] == pytest.approx(0.3 * len(checked) / 96.0)
    assert summary["overhead"] <= 0.05 + 1e-9


def test_the_first_checks_one_time_cost_sets_neither_the_next_interval_nor_the_later_ones() -> None:
    schedule = CheckSchedule(budget=0.05)
    checked = _run(schedule, 60, base=1.0, check=0.3, first_extra=20.0)  # a first check 67x the others
    # 20.3 s would ask for 406 steps; the second check comes within FIRST_INTERVAL steps, and from then on
    # the first check's cost is forgotten: one check in 6 steps again
    assert checked[:2] == [0, FIRST_INTERVAL]
    assert checked[2] - checked[1] == 6


def test_a_budget_is_a_fraction_and_excludes_every() -> None:
    for budget in (0.0, -0.1, 1.0, 3.0):
        with pytest.raises(InputError, match="budget"):
            CheckSchedule(budget=budget)
    with pytest.raises(InputError, match="every or budget"):
        CheckSchedule(every=5, budget=0.05)
    with pytest.raises(InputError, match="every"):
        CheckSchedule(every=0)


@pytest.mark.parametrize("every", [1.5, "2", True, None])
def test_every_must_be_a_whole_number(every) -> None:
    with pytest.raises(InputError, match="every must be a whole number"):
        CheckSchedule(every=every)


@pytest.mark.parametrize("budget", ["3%", "0.03", True])
def test_a_budget_must_be_a_number(budget) -> None:
    with pytest.raises(InputError, match=r"budget is a fraction of the step time \(0.03 for 3 %\)"):
        CheckSchedule(budget=budget)
    assert CheckSchedule(budget=0.03).budget == 0.03  # and a number is taken


def test_ranks_agree_on_the_interval() -> None:
    # another rank asks for 9 steps: every rank takes the largest, so all check the same steps
    schedule = CheckSchedule(budget=0.05, agree=lambda interval: max(interval, 9))
    assert _run(schedule, 20, base=1.0, check=0.001) == [0, 9, 18]


def test_a_step_is_decided_once_even_when_the_schedule_moves() -> None:
    schedule = CheckSchedule(budget=0.05)
    assert schedule.due(0)
    schedule.end_step(0, seconds=1.3, checking_seconds=0.3)
    assert not schedule.due(1)
    assert schedule.due(0)  # step 0 was checked: asking again (a late micro-batch) gives the same answer
