"""Which optimizer steps the live capture checks, and what checking has cost the training process so far.

Two ways to choose the steps:

* ``every=N``: steps 0, N, 2N, ... (the default, N = 1: every step);
* ``budget=B``: as often as keeps checking under a fraction ``B`` of the step time without checking (``0.03``:
  training takes at most about 1.03x as long). After each checked step the interval to the next is
  ``ceil(C / (B · S))``, with ``C`` the training-process seconds the recent checked steps spent on checking
  (capture, the reference's forward passes, and the checks run inline) and ``S`` the recent steps' time
  without checking. Step 0 is always checked, and the next check comes within
  ``FIRST_INTERVAL`` steps: the first check also pays one-time costs (imports, first calls), so its cost is
  dropped once a second check has been timed. A cheap check on a slow step gives interval 1.

Example::

    >>> schedule = CheckSchedule(budget=0.05)
    >>> schedule.due(0)
    True
    >>> schedule.end_step(0, seconds=1.3, checking_seconds=0.3)  # a 1 s step plus 0.3 s of checking
    >>> schedule.interval, schedule.due(1), schedule.due(6)  # 0.3 / (0.05 · 1.0) = 6 steps
    (6, False, True)
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import Any

MAX_INTERVAL = 1000  # with a budget, at least one check per this many steps
FIRST_INTERVAL = 10  # the first check pays one-time costs (imports, first calls): the second comes soon
_RECENT = 20  # steps (and checked steps) whose mean times set the interval


def interval_for_budget(check_seconds: float, step_seconds: float, budget: float) -> int:
    """Steps per check that keep ``check_seconds`` per check under ``budget`` of ``step_seconds`` per step.

    >>> interval_for_budget(0.3, 1.0, 0.05), interval_for_budget(0.01, 1.0, 0.05)
    (6, 1)
    """
    if step_seconds <= 0 or check_seconds <= 0:
        return 1
    return max(1, min(MAX_INTERVAL, math.ceil(check_seconds / (budget * step_seconds) - 1e-9)))


class CheckSchedule:
    """``due(step)`` for each optimizer step, and the cost accounting that a budget needs.

    ``end_step`` must be called once at the end of every optimizer step, checked or not, with the step's wall
    time and the part of it spent on checking. ``agree`` (multi-process runs) maps this rank's interval to the
    one every rank uses, so that all ranks check the same steps.
    """

    def __init__(
        self,
        every: int = 1,
        budget: float | None = None,
        *,
        agree: Callable[[int], int] | None = None,
    ) -> None:
        from grpo_check._kinds import is_real_number, is_whole_number
        from grpo_check.findings import InputError

        if not is_whole_number(every) or every < 1:
            raise InputError(f"every must be a whole number >= 1, got {every!r}", field="every")
        if budget is not None and not is_real_number(budget):
            raise InputError(
                f"budget is a fraction of the step time (0.03 for 3 %), got {budget!r}", field="budget"
            )
        if budget is not None and every != 1:
            raise InputError("give every or budget, not both", field="budget")
        if budget is not None and not (0 < budget < 1):
            raise InputError(
                f"budget is a fraction of the step time, 0 < budget < 1, got {budget}", field="budget"
            )
        self.every = every
        self.budget = budget
        self.interval = every
        self._agree = agree
        self._next_due = 0
        self._decided: dict[int, bool] = {}
        self._base_seconds: deque[float] = deque(maxlen=_RECENT)  # step time without checking
        self._check_seconds: deque[float] = deque(maxlen=_RECENT)  # checking time of checked steps
        self.steps = 0
        self.checked_steps = 0
        self.total_seconds = 0.0
        self.checking_seconds = 0.0

    def due(self, global_step: int) -> bool:
        """Whether optimizer step ``global_step`` is checked (decided once per step)."""
        if self.budget is None:
            return global_step % self.every == 0
        decided = self._decided.get(global_step)
        if decided is None:
            decided = self._decided[global_step] = global_step >= self._next_due
            if len(self._decided) > 4:  # only the current step and the next are ever asked about
                del self._decided[min(self._decided)]
        return decided

    def end_step(self, global_step: int, seconds: float, checking_seconds: float) -> None:
        """Account for one finished optimizer step; with a budget, set the interval after a checked step."""
        checked = self.due(global_step)
        self.steps += 1
        self.total_seconds += seconds
        self.checking_seconds += checking_seconds
        self._base_seconds.append(max(seconds - checking_seconds, 0.0))
        if not checked:
            return
        self.checked_steps += 1
        if self.checked_steps == 2 and self._check_seconds:
            self._check_seconds.clear()  # the first check's one-time costs say nothing of the next checks
        self._check_seconds.append(checking_seconds)
        if self.budget is None:
            return
        check = sum(self._check_seconds) / len(self._check_seconds)
        base = sum(self._base_seconds) / len(self._base_seconds)
        interval = interval_for_budget(check, base, self.budget)
        if self.checked_steps == 1:
            interval = min(interval, FIRST_INTERVAL)
        if self._agree is not None:
            interval = self._agree(interval)
        self.interval = interval
        self._next_due = global_step + interval

    def summary(self) -> dict[str, Any]:
        """What checking cost the training process (seconds, and ``overhead``: checking time ÷ the rest of the
        training time) and how the steps were chosen."""
        without_checking = self.total_seconds - self.checking_seconds
        return {
            "every": self.every if self.budget is None else None,
            "budget": self.budget,
            "interval": self.interval,
            "steps": self.steps,
            "checked_steps": self.checked_steps,
            "training_seconds": round(self.total_seconds, 6),
            "checking_seconds": round(self.checking_seconds, 6),
            # the slow-down checking caused on this process: 0.03 means training took 1.03x as long
            "overhead": self.checking_seconds / without_checking if without_checking > 0 else None,
        }
