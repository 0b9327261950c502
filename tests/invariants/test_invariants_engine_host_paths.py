"""The numpy paths of the shared invariant helpers give what their torch paths give, bit for bit."""

from __future__ import annotations

import math

import pytest
import torch

import grpo_check._step_cache as step_cache_module
from grpo_check._step_cache import step_cache
from grpo_check.invariants._common import masked_abs_max


def _cases() -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(8, 6, generator=generator, dtype=torch.float64)
    valid = torch.rand(8, 6, generator=generator) > 0.3
    nan_valid, nan_padding, inf_valid = values.clone(), values.clone(), values.clone()
    nan_valid[tuple(valid.nonzero()[0].tolist())] = math.nan
    nan_padding[tuple((~valid).nonzero()[0].tolist())] = math.nan
    inf_valid[tuple(valid.nonzero()[1].tolist())] = -math.inf
    zeros = torch.zeros(8, 6, dtype=torch.float64)
    zeros[0, 0] = -0.0
    return [
        ("correct", values, valid),
        ("nan_valid", nan_valid, valid),
        ("nan_padding", nan_padding, valid),
        ("inf_valid", inf_valid, valid),
        ("none_valid", values, torch.zeros_like(valid)),
        ("all_valid", values, torch.ones_like(valid)),
        ("negative_zero", zeros, valid),
        ("tiny", -values.abs() * 1e-300, valid),
        ("one_row", values[:1], valid[:1]),
        ("float32", values.float(), valid),
        ("float32_nan_valid", nan_valid.float(), valid),
        ("float32_inf_valid", inf_valid.float(), valid),
        ("float32_negative_zero", zeros.float(), valid),
        ("float16", values.half(), valid),
        ("float16_nan_valid", nan_valid.half(), valid),
        ("float16_overflow", values.half() * 60000, valid),
        ("bfloat16", values.bfloat16(), valid),
        ("broadcast_mask", values, valid[:, :1]),
    ]


@pytest.mark.parametrize("name", [case[0] for case in _cases()])
def test_masked_abs_max_host_path_is_the_torch_path(name, monkeypatch):
    _, values, valid = next(case for case in _cases() if case[0] == name)
    with step_cache():
        fast = masked_abs_max(values, valid)
    monkeypatch.setattr(step_cache_module, "HOST_ELEMENTS", -1)  # no numpy view: the torch path
    with step_cache():
        general = masked_abs_max(values, valid)
    assert repr(fast) == repr(general) and type(fast) is float
    assert repr(general) == repr(float(torch.where(valid, values.abs(), 0.0).max()))
    expected = {"nan_valid": "nan", "nan_padding": None, "inf_valid": "inf", "none_valid": "0.0"}.get(
        name.removeprefix("float32_").removeprefix("float16_")
    )
    assert expected is None or repr(fast) == expected


def test_masked_abs_max_of_an_empty_tensor_raises_as_torch_does():
    with pytest.raises(RuntimeError), step_cache():
        masked_abs_max(torch.zeros(0, 3, dtype=torch.float64), torch.zeros(0, 3, dtype=torch.bool))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_a_non_finite_value_in_any_checked_tensor_leaves_the_step_not_known_finite(dtype):
    from grpo_check.invariants._common import _FINITE_CHECKED, finite_sources
    from grpo_check.trace.model import TraceStep

    generator = torch.Generator().manual_seed(1)
    tensors = {
        "logps": -torch.rand(4, 5, generator=generator).to(dtype),
        "old_logps": -torch.rand(4, 5, generator=generator, dtype=torch.float64),  # another dtype
        "rewards_per_func": torch.rand(4, 2, generator=generator).to(dtype),  # another last dim
        "rewards": torch.rand(4, generator=generator).to(dtype),
        "reward_weights": torch.ones(2, dtype=dtype),  # another length
        "loss": torch.tensor(0.5, dtype=dtype),  # 0-dim
        "loss_normalizer": torch.tensor(20.0, dtype=torch.float64),
        "completion_mask": torch.ones(4, 5, dtype=torch.int64),  # not checked
    }
    correct = TraceStep(tensors=tensors)
    assert set(finite_sources(correct)) == {id(t) for name, t in tensors.items() if name in _FINITE_CHECKED}
    for name in (
        "logps",
        "old_logps",
        "rewards_per_func",
        "rewards",
        "reward_weights",
        "loss",
        "loss_normalizer",
    ):
        for bad in (math.nan, math.inf, -math.inf):
            broken = tensors[name].clone()
            broken.reshape(-1)[-1] = bad
            assert finite_sources(TraceStep(tensors={**tensors, name: broken})) == {}, (name, bad)
    # +inf in one tensor and -inf in another: their sum is NaN, still not finite
    plus, minus = tensors["logps"].clone(), tensors["rewards"].clone()
    plus[0, 0], minus[0] = math.inf, -math.inf
    assert finite_sources(TraceStep(tensors={**tensors, "logps": plus, "rewards": minus})) == {}
    with step_cache(correct):
        assert finite_sources(correct) is finite_sources(correct)
