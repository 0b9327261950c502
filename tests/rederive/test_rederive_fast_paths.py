"""The numpy shortcut of the unscorable-rows re-derivation answers what its torch test answers."""

from __future__ import annotations

import math

import pytest
import torch

from grpo_check.rederive import checks_advantages
from grpo_check.rederive.derive import unscorable

_NAN = math.nan


@pytest.mark.parametrize(
    "rewards",
    [
        [[1.0, _NAN], [0.0, 0.5]],  # a NaN, no unscorable row
        [[_NAN, _NAN], [0.0, 0.5]],  # an unscorable row
        [[math.inf, -math.inf], [-0.0, 0.0]],
        [1.0, _NAN, 0.0],
        [1.0, 2.0, 0.0],
        [[], []],  # no reward function: every row unscorable
        [],
    ],
)
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64, torch.bfloat16])
def test_no_unscorable_row_equals_the_torch_test(rewards, dtype: torch.dtype) -> None:
    values = torch.tensor(rewards, dtype=dtype)
    advantages = torch.zeros(values.shape[0])
    fast = checks_advantages._no_unscorable_row(values, advantages)
    if dtype is torch.bfloat16:  # no numpy view: torch decides
        assert fast is False
    else:
        assert fast == (not bool(unscorable(values).any())), rewards
    assert (
        checks_advantages._no_unscorable_row(values, torch.zeros(values.shape[0] + 1)) is False
    )  # rows differ
    graph = values.double().requires_grad_(True)
    assert checks_advantages._no_unscorable_row(graph, advantages) is False  # in a graph: torch decides
