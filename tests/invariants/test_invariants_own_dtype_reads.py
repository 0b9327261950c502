"""Checks that read a float32 tensor in its own dtype (no float64 copy: negation, |·|, where and max are exact
in any float dtype) give the findings of the float64 copy, field for field, on correct and broken steps."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from invariants_builders import build_step, with_tensors

import grpo_check.invariants.grad as grad_module
import grpo_check.invariants.kl as kl_module
from grpo_check.compare.synthetic import make_step
from grpo_check.config import GRPOSpec
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


_GRAD_CHECKS = [
    REGISTRY[check_id]
    for check_id in (
        "grad.zero_outside_loss_mask",
        "grad.sign_matches_advantage",
        "grad.kl_sign_where_kl_dominates",
    )
]


def _grad_variants() -> list[tuple[str, TraceStep, GRPOSpec]]:
    spec = GRPOSpec(num_generations=4, loss_type="dapo", beta=0.04, max_completion_length=6)
    step = make_step(spec, n_prompts=2, completion_length=6, vocab_size=50)
    grad = step["logps_grad"].float()
    padding = step["completion_mask"] == 0
    leaking = grad.clone()
    leaking[padding.nonzero()[0].tolist()] = 1e-7
    kl_heavy = dataclasses.replace(spec, beta=1e4)
    out = [
        ("float32", with_tensors(step, logps_grad=grad), spec),
        ("float32_negated", with_tensors(step, logps_grad=-grad), spec),
        ("float32_zeros", with_tensors(step, logps_grad=grad * 0.0), spec),
        ("float32_negative_zeros", with_tensors(step, logps_grad=grad * 0.0 - 0.0), spec),
        ("float32_leaking", with_tensors(step, logps_grad=leaking), spec),
        ("float32_tiny", with_tensors(step, logps_grad=grad * 1e-38), spec),
        ("float32_kl_heavy", with_tensors(step, logps_grad=grad), kl_heavy),
        ("float32_kl_heavy_negated", with_tensors(step, logps_grad=-grad), kl_heavy),
    ]
    for dtype in (torch.float64, torch.bfloat16, torch.float16):
        out.append((f"{dtype}", with_tensors(step, logps_grad=grad.to(dtype)), spec))
        out.append((f"{dtype}_negated", with_tensors(step, logps_grad=-grad.to(dtype)), spec))
    return out


def _grad_findings(step: TraceStep, spec: GRPOSpec) -> list[str]:
    shared = [repr(f) for f in run_invariants(step, spec, checks=["grad."])]
    alone = [repr(f) for check in _GRAD_CHECKS for f in check.run(step, spec)]
    return shared + alone + [repr(f) for check in _GRAD_CHECKS for f in check.run(step, spec, tolerance=1e-9)]


def test_gradient_read_in_its_own_dtype_gives_the_float64_findings(monkeypatch: pytest.MonkeyPatch) -> None:
    variants = _grad_variants()
    own = [_grad_findings(step, spec) for _, step, spec in variants]
    fired = {
        f.check_id
        for _, step, spec in variants
        for f in run_invariants(step, spec, checks=["grad."])
        if f.verdict in (Verdict.FAIL, Verdict.WARN)
    }
    monkeypatch.setattr(grad_module, "_host_grad", grad_module.f64)  # every dtype through the float64 copy
    for (name, step, spec), expected in zip(variants, own, strict=True):
        assert _grad_findings(step, spec) == expected, name
    assert {
        "grad.zero_outside_loss_mask",
        "grad.sign_matches_advantage",
        "grad.kl_sign_where_kl_dominates",
    } <= fired
