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


def test_step_coordinates_are_where_in_step_s_inside_and_outside_a_step_cache() -> None:
    from grpo_check._step_cache import step_cache
    from grpo_check.compare.synthetic import make_step
    from grpo_check.config import GRPOSpec
    from grpo_check.invariants.registry import where_in_step
    from grpo_check.rederive.checks_common import _where

    step = make_step(GRPOSpec(num_generations=4))
    step.meta.update(step=7, micro_batch=1, rank=0)
    assert _where(step) == where_in_step(step, None, None)  # no cache open
    with step_cache(step):
        first = _where(step)  # a miss: where_in_step makes the step's entry
        assert first == where_in_step(step, None, None)
        assert _where(step) is first  # a hit: the same object
        assert _where(step, 2, 1) == where_in_step(step, 2, 1)  # a row and a token: where_in_step
        assert _where(step, 2, 1).step == 7 and _where(step, 2, 1).generation == 2


@pytest.mark.parametrize("seed", range(3))
def test_no_unscorable_row_in_python_floats_equals_the_numpy_test(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    generator = torch.Generator().manual_seed(seed)
    pool = torch.tensor([0.0, -0.0, 1.0, _NAN, math.inf, -math.inf, 2.5], dtype=torch.float64)
    cases = []
    for _ in range(300):
        rows, cols = (
            int(torch.randint(0, 5, (1,), generator=generator)),
            int(torch.randint(0, 4, (1,), generator=generator)),
        )
        values = pool[torch.randint(len(pool), (rows, cols), generator=generator)]
        for dtype in (torch.float16, torch.float32, torch.float64):
            cases.append(values.to(dtype))
            cases.append(values[:, 0].to(dtype) if cols else values.new_zeros(rows).to(dtype))
    fast = [checks_advantages._no_unscorable_row(v, torch.zeros(v.shape[0])) for v in cases]
    assert any(fast) and not all(fast)
    monkeypatch.setattr(checks_advantages, "_PY_ELEMENTS", -1)  # the numpy test
    slow = [checks_advantages._no_unscorable_row(v, torch.zeros(v.shape[0])) for v in cases]
    assert fast == slow
    assert fast == [not bool(unscorable(v).any()) for v in cases]
