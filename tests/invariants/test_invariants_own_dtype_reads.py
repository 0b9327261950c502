"""Checks that read a float32 tensor in its own dtype (no float64 copy: negation, |·|, where and max are exact
in any float dtype) give the findings of the float64 copy, field for field, on correct and broken steps."""

from __future__ import annotations

import math

import pytest
import torch
from invariants_builders import build_step, with_tensors

import grpo_check.invariants.kl as kl_module
from grpo_check.findings import Verdict
from grpo_check.invariants import REGISTRY, run_invariants
from grpo_check.trace.model import TraceStep

_CHECK = REGISTRY["kl.nonnegative"]


def _kl_variants() -> list[tuple[str, TraceStep]]:
    built = build_step(seed=11, prompts=2, G=4, T=6)
    step = built.step
    kl = step["kl"].float()
    negative = kl.clone()
    negative[1, 1] = -0.25
    tiny_negative = kl.clone()
    tiny_negative[0, 0] = -1e-9
    zeros = torch.zeros_like(kl)
    signed_zeros = zeros.clone()
    signed_zeros[::2] = -0.0
    nan_valid = kl.clone()
    nan_valid[2, 1] = math.nan
    inf_padding = kl.clone()
    inf_padding[step["completion_mask"] == 0] = -math.inf
    out = [
        ("float32", with_tensors(step, kl=kl)),
        ("float32_negative", with_tensors(step, kl=negative)),
        ("float32_tiny_negative", with_tensors(step, kl=tiny_negative)),
        ("float32_zeros", with_tensors(step, kl=zeros)),
        ("float32_signed_zeros", with_tensors(step, kl=signed_zeros)),
        ("float32_nan", with_tensors(step, kl=nan_valid)),
        ("float32_inf_padding", with_tensors(step, kl=inf_padding)),
        ("float32_large", with_tensors(step, kl=kl * 3e38)),
        (
            "float32_no_valid_token",
            with_tensors(step, completion_mask=torch.zeros_like(step["completion_mask"])),
        ),
    ]
    for dtype in (torch.float64, torch.bfloat16, torch.float16):
        out.append((f"{dtype}", with_tensors(step, kl=kl.to(dtype))))
        out.append((f"{dtype}_negative", with_tensors(step, kl=negative.to(dtype))))
    return [(name, with_tensors(s, kl=s["kl"])) for name, s in out]


def _findings(step: TraceStep) -> list[str]:
    shared = [repr(f) for f in run_invariants(step, checks=["kl."])]
    return shared + [repr(f) for f in _CHECK.run(step)] + [repr(f) for f in _CHECK.run(step, tolerance=1e-6)]


def test_kl_read_in_its_own_dtype_gives_the_float64_findings(monkeypatch: pytest.MonkeyPatch) -> None:
    variants = _kl_variants()
    own = [_findings(step) for _, step in variants]
    verdicts = {f.verdict for _, step in variants for f in _CHECK.run(step)}
    monkeypatch.setattr(kl_module, "plain", kl_module.f64)  # every dtype through the float64 copy
    for (name, step), expected in zip(variants, own, strict=True):
        assert _findings(step) == expected, name
    assert {Verdict.PASS, Verdict.FAIL, Verdict.INCONCLUSIVE} <= verdicts
