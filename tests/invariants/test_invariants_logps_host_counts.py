"""logps.bf16_quantised counts the 16-bit grid hits of a small float32 step in numpy; the findings equal the
torch path's (numpy views turned off), field for field, on genuine, quantised and broken log-probs."""

from __future__ import annotations

import math

import pytest
import torch
from invariants_builders import build_step, with_tensors

import grpo_check._step_cache as step_cache_module
from grpo_check.findings import Verdict
from grpo_check.invariants import REGISTRY, run_invariants
from grpo_check.trace.model import TraceStep

_NAMES = ("logps", "old_logps", "ref_logps")
_CHECKS = [REGISTRY["logps.bf16_quantised"], REGISTRY["logps.nonpositive"]]


def _with_logps(step: TraceStep, change) -> TraceStep:
    return with_tensors(step, **{name: change(step[name].float()) for name in _NAMES})


def _quarter_on_grid(values: torch.Tensor) -> torch.Tensor:
    out = values.clone()
    out[:, ::4] = out[:, ::4].bfloat16().float()
    return out


def _quarter_low_bits_zero(values: torch.Tensor) -> torch.Tensor:
    """A quarter of the columns with float16's missing mantissa bits cleared (on its grid if |v| ≤ 65504)."""
    out = values.clone()
    bits = out[:, ::4].contiguous().view(torch.int32) & ~0x1FFF
    out[:, ::4] = bits.view(torch.float32)
    return out


def _variants() -> list[tuple[str, TraceStep]]:
    step = build_step(seed=5, prompts=4, G=4, T=8).step
    mask = step["completion_mask"]
    nan_valid = step["logps"].float().clone()
    nan_valid[mask.bool()] = torch.where(torch.arange(int(mask.sum())) == 3, math.nan, nan_valid[mask.bool()])
    out = [
        ("genuine", _with_logps(step, lambda v: v)),
        ("quarter_on_bf16", _with_logps(step, _quarter_on_grid)),
        ("bf16_grid", _with_logps(step, lambda v: v.bfloat16().float())),
        ("float16_grid", _with_logps(step, lambda v: v.half().float())),
        ("float16_grid_large", _with_logps(step, lambda v: (v * 1e6).bfloat16().float())),
        ("quarter_float16_bits", _with_logps(step, _quarter_low_bits_zero)),
        ("quarter_float16_bits_large", _with_logps(step, lambda v: _quarter_low_bits_zero(v * 1e6))),
        ("tiny", _with_logps(step, lambda v: v * 1e-4)),
        ("negative_zeros", _with_logps(step, lambda v: v * 0.0 - 0.0)),
        ("nan_valid", with_tensors(_with_logps(step, lambda v: v), logps=nan_valid)),
        ("inf_padding", _with_logps(step, lambda v: v.masked_fill(mask == 0, -math.inf))),
        ("positive", _with_logps(step, lambda v: -v)),
        (
            "few_tokens",
            with_tensors(
                _with_logps(step, lambda v: v),
                completion_mask=mask * (torch.arange(mask.shape[0]) < 1)[:, None],
            ),
        ),
        ("float64", with_tensors(step, **{name: step[name].double() for name in _NAMES})),
        ("bfloat16", with_tensors(step, **{name: step[name].bfloat16() for name in _NAMES})),
    ]
    return out


def _findings(step: TraceStep) -> list[str]:
    shared = [repr(f) for f in run_invariants(step, checks=["logps."])]
    alone = [repr(f) for check in _CHECKS for f in check.run(step)]
    return shared + alone + [repr(f) for check in _CHECKS for f in check.run(step, tolerance=0.3)]


def test_numpy_grid_counts_give_the_torch_findings(monkeypatch: pytest.MonkeyPatch) -> None:
    variants = _variants()
    fast = [_findings(step) for _, step in variants]
    quantised = {
        name: f for name, step in variants for f in run_invariants(step, checks=["logps.bf16_quantised"])
    }
    monkeypatch.setattr(step_cache_module, "HOST_ELEMENTS", -1)
    for (name, step), expected in zip(variants, fast, strict=True):
        assert _findings(step) == expected, name
    # the counts decide: a pass whose figure is a fraction the counts give, and failures
    assert (
        quantised["quarter_on_bf16"].verdict is Verdict.PASS
        and 0.1 < quantised["quarter_on_bf16"].figure < 0.5
    )
    # beyond 65504 the cleared bits are no float16 value: only the (fewer) bf16 hits count
    assert quantised["quarter_float16_bits"].figure > quantised["quarter_float16_bits_large"].figure
    assert quantised["bf16_grid"].verdict in (Verdict.FAIL, Verdict.WARN)
    assert quantised["float16_grid"].verdict in (Verdict.FAIL, Verdict.WARN)
