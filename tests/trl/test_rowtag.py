"""Rewards follow their rows when a trainer reorders the batch after scoring it (scored_row_order)."""

from __future__ import annotations

from grpo_check.trl.rowtag import scored_row_order

PAD = 0
SCORED = [[5, 6, 2], [7, 2], [8, 9, 2], [7, 2]]  # rows 1 and 3: the same tokens
KEYS = [("p0", [0.1]), ("p1", [0.5]), ("p2", [0.9]), ("p1", [0.5])]


def padded(rows: list[list[int]], width: int = 3) -> list[list[int]]:
    return [row + [PAD] * (width - len(row)) for row in rows]


def test_same_order_is_none() -> None:
    assert scored_row_order(SCORED, padded(SCORED), PAD, KEYS) is None


def test_reordered_rows_are_found() -> None:
    order = [2, 0, 3, 1]
    batch = padded([SCORED[j] for j in order])
    found = scored_row_order(SCORED, batch, PAD, KEYS)
    assert found is not None
    assert [SCORED[j] for j in found] == [SCORED[j] for j in order]  # each row gets its own scored row
    assert sorted(found) == [0, 1, 2, 3]


def test_same_tokens_scored_differently_is_not_guessed() -> None:
    keys = [("p0", [0.1]), ("p1", [0.5]), ("p2", [0.9]), ("p3", [0.0])]  # rows 1 and 3 scored differently
    batch = padded([SCORED[j] for j in [3, 2, 1, 0]])
    assert scored_row_order(SCORED, batch, PAD, keys) is None


def test_rows_not_scored_is_none() -> None:
    assert scored_row_order(SCORED, padded([[5, 6, 2], [7, 2], [8, 9, 2], [4, 2]]), PAD, KEYS) is None
    assert scored_row_order(SCORED, padded(SCORED[:3]), PAD, KEYS) is None
