"""A finding's JSON form: the coordinates' and details' fast paths give what the general formulation gives."""

from __future__ import annotations

import dataclasses
import math
import random
from typing import Any

import numpy as np
import pytest

from grpo_check.findings import Finding, Verdict, Where, json_safe


def _json_safe_general(value: Any) -> Any:
    """The general formulation: every non-finite float (subclasses included) becomes its repr."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {k: _json_safe_general(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe_general(v) for v in value]
    return value


_LEAVES = (
    0,
    -3,
    2.5,
    -0.0,
    math.nan,
    math.inf,
    -math.inf,
    True,
    False,
    None,
    "text",
    np.float64(1.5),
    np.float64(math.nan),
    np.int64(7),
    Verdict.FAIL,
)


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(5) if depth < 3 else 0
    if kind == 0 or kind == 4:
        return rng.choice(_LEAVES)
    items = [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if kind == 1:
        return items
    if kind == 2:
        return tuple(items)
    return {f"k{i}": item for i, item in enumerate(items)}


@pytest.mark.parametrize("seed", range(40))
def test_json_safe_equals_the_general_formulation(seed: int) -> None:
    value = _random_value(random.Random(seed))
    assert repr(json_safe(value)) == repr(_json_safe_general(value))


def test_json_safe_replaces_non_finite_floats_only() -> None:
    details = {"a": [1.0, math.nan, (math.inf, -0.0)], "b": {"c": -math.inf, "d": 3}}
    assert json_safe(details) == {"a": [1.0, "nan", ["inf", -0.0]], "b": {"c": "-inf", "d": 3}}


@pytest.mark.parametrize(
    "where",
    [
        Where(),
        Where(step=0),
        Where(step=2, micro_batch=1, rank=0, prompt=3, generation=1, row=5, token=0, token_id=42),
        Where(row=0, token=0, reward_function="accuracy"),
        Where(token_id=0, micro_batch=0),
    ],
)
def test_where_to_dict_is_the_set_fields_in_field_order(where: Where) -> None:
    expected = {k: v for k, v in dataclasses.asdict(where).items() if v is not None}
    assert list(where.to_dict().items()) == list(expected.items())
    finding = Finding("x.y", "loss", Verdict.PASS, where=where, details={"v": math.nan})
    assert finding.to_dict()["where"] == expected
    assert finding.to_dict()["details"] == {"v": "nan"}


def test_where_describe_names_the_set_coordinates_in_order() -> None:
    full = Where(
        step=1, micro_batch=2, rank=0, prompt=3, generation=1, row=4, token=5, token_id=7, reward_function="f"
    )
    assert (
        full.describe()
        == "step 1, micro-batch 2, rank 0, prompt 3, generation 1, row 4, token 5, (id 7), reward fn 'f'"
    )
    assert Where(row=0, token=0).describe() == "row 0, token 0"  # a zero coordinate is set, not missing
    assert Where(prompt=2, token_id=9).describe() == "prompt 2, (id 9)"
    assert Where().describe() == "-"
