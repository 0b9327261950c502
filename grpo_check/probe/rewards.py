"""Probe a reward function for row independence: each completion's reward must not depend on the other rows.

The rewards stage compares what the trainer did with the rewards it received, so a reward function that
scores the *wrong row* (an off-by-one index, a ``zip`` of lists that are not aligned, a target column read at
``i - 1``) hands every later stage self-consistent numbers: nothing downstream can see it. A reward function
of the usual kind (one value per completion, from that completion, its prompt and its own dataset columns)
gives every row the same reward whatever the order of the batch. The probe calls it twice more on the batch it
has just scored: once in the same order (to tell a non-deterministic function apart) and once with every
per-row argument reversed, and maps the second answer back to the batch order.

* same order gives different rewards: the function is not deterministic, the probe is inconclusive;
* reversed order gives a row a different reward: FAIL ``rewards.row_independence`` (stage ``rewards``), the row and
  both values named;
* otherwise PASS.

It is independent of any trainer: the adapter passes ``call(order)``, which calls the reward function with
its per-row arguments permuted by ``order`` (and with side-effect hooks such as logging callbacks silenced),
and the rewards the trainer got.

Example::

    >>> def good(completions, answer):
    ...     return [float(c == a) for c, a in zip(completions, answer)]
    >>> def shifted(completions, answer):
    ...     return [float(completions[i - 1] == answer[i]) for i in range(len(completions))]
    >>> rows = {"completions": ["1", "2", "3", "4"], "answer": ["1", "1", "2", "3"]}
    >>> call = lambda fn: lambda order: fn(**{k: [v[i] for i in order] for k, v in rows.items()})
    >>> probe_reward_rows(call(good), good(**rows), name="good").verdict.value
    'pass'
    >>> probe_reward_rows(call(shifted), shifted(**rows), name="shifted").verdict.value
    'fail'
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from grpo_check.findings import Finding, Verdict, Where

CHECK_ID = "rewards.row_independence"
STAGE = "rewards"
RTOL = 1e-6
ATOL = 1e-9


def _value(x: Any) -> float:
    return math.nan if x is None else float(x)


def _same(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= ATOL + RTOL * abs(b)  # R1: the reward of a row is a function of that row alone


def _gap(a: float, b: float) -> float:
    """|a − b|, infinite where exactly one of them is unscorable (NaN)."""
    return math.inf if math.isnan(a) != math.isnan(b) else abs(a - b)


def differing_rows(first: Sequence[Any], second: Sequence[Any]) -> list[int]:
    """Rows whose rewards differ (``None`` and NaN both mean "unscorable" and equal each other)."""
    return [i for i, (a, b) in enumerate(zip(first, second, strict=True)) if not _same(_value(a), _value(b))]


def reversed_order(rows: int) -> list[int]:
    return list(range(rows - 1, -1, -1))


def probe_reward_rows(
    call: Callable[[list[int]], Sequence[Any]],
    rewards: Sequence[Any],
    *,
    name: str,
    step: int | None = None,
) -> Finding:
    """Call the reward function (through ``call(order)``) in batch order and in reversed order and hold each
    row's reward to ``rewards``, the rewards the trainer got for the batch in its order."""
    rows = len(rewards)
    where = Where(step=step, reward_function=name)
    details: dict[str, Any] = {"reward_function": name, "rows": rows}
    if rows < 2:
        return Finding(CHECK_ID, STAGE, Verdict.INCONCLUSIVE, where=where, kind="invariant",
                       explanation=f"reward function {name!r}: a batch of one row cannot be reordered")  # fmt: skip
    again = list(call(list(range(rows))))
    if len(again) != rows or differing_rows(again, rewards):
        changed = differing_rows(again, rewards) if len(again) == rows else list(range(rows))
        details["rows_changed_on_repeat"] = changed[:20]
        return Finding(
            CHECK_ID, STAGE, Verdict.INCONCLUSIVE, where=where, kind="invariant", details=details,
            explanation=f"reward function {name!r} is not deterministic: called again on the same batch it gave "
            f"{len(changed)} of {rows} row(s) a different reward, so its row independence cannot be probed",
        )  # fmt: skip
    order = reversed_order(rows)
    answer = list(call(order))
    if len(answer) != rows:
        details["returned"] = len(answer)
        return Finding(
            CHECK_ID, STAGE, Verdict.FAIL, where=where, kind="invariant", details=details,
            explanation=f"reward function {name!r} returned {len(answer)} rewards for a reordered batch of "
            f"{rows} rows",
        )  # fmt: skip
    back: list[Any] = [None] * rows
    for position, row in enumerate(order):
        back[row] = answer[position]
    bad = differing_rows(back, rewards)
    details["rows_changed"] = bad[:20]
    if not bad:
        return Finding(
            CHECK_ID, STAGE, Verdict.PASS, figure=0.0, tolerance=RTOL, where=where, kind="invariant",
            details=details, explanation=f"reward function {name!r} gives every row the same reward in a "
            f"reversed batch ({rows} rows)",
        )  # fmt: skip
    gaps = {i: _gap(_value(back[i]), _value(rewards[i])) for i in bad}
    worst = max(bad, key=lambda i: gaps[i])
    scale = max((abs(_value(r)) for r in rewards if not math.isnan(_value(r))), default=0.0)
    return Finding(
        CHECK_ID,
        STAGE,
        Verdict.FAIL,
        figure=gaps[worst],
        tolerance=ATOL + RTOL * scale,
        where=Where(step=step, row=worst, reward_function=name),
        kind="invariant",
        details=details,
        explanation=(
            f"reward function {name!r} gives {len(bad)} of {rows} row(s) a different reward when the batch is "
            f"reversed (worst row {worst}: {_value(rewards[worst]):.6g} in batch order, {_value(back[worst]):.6g} "
            f"reversed; allowed: equal up to rtol {RTOL:g}): a row's reward depends on the other rows"
        ),
        likely_cause=(
            "the reward function scores another row's completion or target: an off-by-one index "
            "(completions[i - 1]), lists zipped out of step, or a per-row column read at the wrong position"
        ),
        fix=(
            "score row i from completions[i], prompts[i] and the dataset columns at [i] only; a batch-relative "
            "reward (rank within the batch) is row-dependent by design and belongs in the advantage instead"
        ),
    )
