"""Log-prob-stage invariants: finite, ≤ 0, not bf16-quantised, entropies ≥ 0."""

from __future__ import annotations

import math

import numpy as np
import torch

from grpo_check._step_cache import host_view
from grpo_check.config import GRPOSpec
from grpo_check.findings import Verdict
from grpo_check.invariants._common import (
    _SMALL_SLICE,
    Outcome,
    any_true,
    argmax_2d,
    cached,
    count_true,
    count_true_per_slice,
    f64,
    finite_outcome,
    fmt,
    inconclusive,
    known_finite,
    machine_eps,
    masked_abs_max,
    passed,
    plain,
    scalar_like,
    token_mask,
    valid_finite,
    where_fill,
)
from grpo_check.invariants.registry import register
from grpo_check.trace.model import TraceStep

LOGP_NAMES = ("logps", "old_logps", "ref_logps", "sampler_logps")

_SIGN_ERROR_LOGP = 0.5  # a log-prob above this cannot come from rounding, even in bf16
_SIGN_ERROR_FRACTION = 0.25  # ... nor can a quarter of all tokens being positive


class _LogpStack:
    """The step's float32/float64 (B, T) log-prob tensors stacked (K, B, T), with their valid-and-finite mask
    ((K, B, T), or the (B, T) token mask it broadcasts from when every value is known finite).

    One set of reductions then serves every log-prob tensor of the step. Building it also fills the step
    cache's per-tensor finite and valid masks with views of the stacked ones, so the checks that still go
    tensor by tensor reuse them.
    """

    def __init__(self, step: TraceStep, names: list[str]):
        self.names = names
        self.values = torch.stack([plain(step[name]) for name in names])
        if known_finite(step, *names):  # every value finite: valid is the (B, T) token mask, broadcast
            self.valid = token_mask(step, step[names[0]])
            return
        difference = self.values - self.values
        finite = difference == difference  # = isfinite (see _step_cache._isfinite)
        self.valid = finite & token_mask(step, step[names[0]])
        for index, name in enumerate(names):
            tensor = step[name]
            cached(("isfinite", tensor), lambda index=index: finite[index])
            cached(("valid_finite", id(step), tensor), lambda index=index: self.valid[index])


def _logp_stack(step: TraceStep) -> _LogpStack | None:
    """The shared :class:`_LogpStack` of the step, or ``None`` when its log-prob tensors cannot be stacked
    (a 16-bit or integer tensor, different shapes or dtypes, or only one tensor: nothing to share)."""
    tensors = step.tensors  # (step.get and step[name] without their method calls)
    names = [name for name in LOGP_NAMES if tensors.get(name) is not None]
    if len(names) < 2:
        return None
    first = tensors[names[0]]
    if first.dim() != 2 or first.dtype not in (torch.float32, torch.float64):
        return None
    shape, dtype = first.shape, first.dtype
    parts = [first]
    for name in names[1:]:  # (a loop, not any(genexpr): a call per name)
        tensor = tensors[name]
        if tensor.shape != shape or tensor.dtype != dtype:
            return None
        parts.append(tensor)
    return cached(("logp_stack", id(step), *parts), lambda: _LogpStack(step, names))


@register(
    "logps.finite",
    requires=[(name,) for name in (*LOGP_NAMES, "entropies")],
    description="logps, old_logps, ref_logps, sampler_logps and entropies are finite on completion tokens",
    tolerance="exact",
    likely_cause="log of a zero probability (a token the sampler could not have produced: wrong temperature, "
    "top-k applied on one side only, misaligned shift) or an overflow in low precision",
    fix="compute log-probs with log_softmax in float32 on the shifted logits that predict each token",
)
def logps_finite(step: TraceStep, spec: GRPOSpec | None, *, tolerance: float | None = None) -> Outcome:
    return finite_outcome(step, (*LOGP_NAMES, "entropies"))


def _positive_tolerance(dtype: torch.dtype) -> float:
    return 0.0 if dtype in (torch.float16, torch.bfloat16) else 64 * machine_eps(dtype)


@register(
    "logps.nonpositive",
    requires=[(name,) for name in LOGP_NAMES],
    catalog_ids=("S1", "32"),
    description="every log-prob is ≤ 0 on completion tokens (log of a probability)",
    tolerance="64·eps of the dtype (0 for 16-bit); > 0.5 or > 25% of tokens positive is a sign error",
    likely_cause="log-softmax sign flipped (logsumexp − logit instead of logit − logsumexp)",
    fix="logp = logits.log_softmax(-1).gather(-1, ids) (or logit − logsumexp); never logsumexp − logit",
)
def nonpositive(step: TraceStep, spec: GRPOSpec | None, *, tolerance: float | None = None) -> Outcome:
    stack = _logp_stack(step)
    if stack is not None:  # every tensor at once; anything but a clean pass takes the per-tensor path below
        allowed = tolerance if tolerance is not None else _positive_tolerance(stack.values.dtype)
        tops = _stack_tops_host(stack)
        if tops is None:
            masked = where_fill(stack.valid, stack.values, -torch.inf)
            tops = masked.amax(dim=(1, 2)).tolist()  # −inf: no valid token in that tensor
        finite_tops = [top for top in tops if top != -math.inf]
        if finite_tops and max(finite_tops) <= allowed:
            return passed(
                f"max log-prob {fmt(max(finite_tops))} ≤ 0 in {', '.join(stack.names)}",
                max(finite_tops),
                allowed,
            )
    return _nonpositive_per_tensor(step, tolerance)


def _stack_tops_host(stack: _LogpStack) -> list[float] | None:
    """Per tensor of a small CPU stack, its largest valid log-prob (−inf: none) in numpy: the torch path's
    where-then-amax. ``None`` without numpy views, or when a maximum is a zero (which of ±0 a maximum returns
    depends on the order it visits them in), or for an empty stack (torch's amax refuses it, and so the
    check): the torch path computes them."""
    values, valid = host_view(stack.values), host_view(stack.valid)
    if (
        values is None
        or valid is None
        or values.ndim != 3
        or values.size == 0
        or valid.shape not in (values.shape, values.shape[1:])
    ):
        return None
    tops = _maximum_reduce(values, axis=(1, 2), initial=-np.inf, where=valid).tolist()
    return None if 0.0 in tops else tops


_maximum_reduce = np.maximum.reduce


def _nonpositive_per_tensor(step: TraceStep, tolerance: float | None) -> Outcome:
    worst: tuple[float, str, torch.Tensor, torch.Tensor, float] | None = None
    checked: list[str] = []
    for name in LOGP_NAMES:
        tensor = step.get(name)
        if tensor is None:
            continue
        checked.append(name)
        # max, argmax and the sign of a float tensor are the same in its own dtype as in float64
        values = plain(tensor) if tensor.is_floating_point() else f64(tensor)
        valid = valid_finite(step, tensor)
        if not any_true(valid):
            continue
        masked = where_fill(valid, values, -torch.inf)
        top = float(masked.max())  # the value at argmax_2d(masked); the position is only needed on failure
        allowed = tolerance if tolerance is not None else _positive_tolerance(tensor.dtype)
        if worst is None or top - allowed > worst[0] - worst[4]:
            worst = (top, name, masked, values, allowed)
    if worst is None:
        return inconclusive(f"no valid token in {', '.join(checked)}")
    top, name, masked, values, allowed = worst
    if top <= allowed:
        return passed(f"max log-prob {fmt(top)} ≤ 0 in {', '.join(checked)}", top, allowed)
    row, token = argmax_2d(masked)
    valid = valid_finite(
        step, step[name]
    )  # the positive fraction is only reported, so only computed, on failure
    positive_fraction = float(((values > 0) & valid).sum() / valid.sum())
    details = {"tensor": name, "positive_fraction": positive_fraction}
    if top > _SIGN_ERROR_LOGP or positive_fraction > _SIGN_ERROR_FRACTION:
        return Outcome(
            Verdict.FAIL,
            f"{name} has log-probs > 0 (max {fmt(top)}, {positive_fraction:.1%} of tokens positive): "
            "a probability above 1",
            figure=top,
            tolerance=allowed,
            row=row,
            token=token,
            details=details,
        )
    return Outcome(
        Verdict.WARN,
        f"{name} has small positive log-probs (max {fmt(top)}, {positive_fraction:.2%} of tokens): "
        "rounding of a low-precision log-softmax",
        figure=top,
        tolerance=allowed,
        row=row,
        token=token,
        details=details,
        catalog_id="32",
        likely_cause="log-softmax computed in bf16/fp16: log-probs are quantised and can exceed 0",
        fix="upcast logits to float32 before log_softmax",
    )


_MIN_TOKENS = 16
_QUANTISED_FRACTION = 0.5


_FLOAT32_LOW_BITS = {torch.bfloat16: 0xFFFF, torch.float16: 0x1FFF}  # mantissa bits float32 has and they lack
_FLOAT16_MAX = 65504.0


def _on_grid(values: torch.Tensor, grid: torch.dtype, magnitude: torch.Tensor | None = None) -> torch.Tensor:
    """``values.to(grid).to(values.dtype) == values``: which values the 16-bit ``grid`` represents exactly.

    For float32 it reads the bit pattern instead of round-tripping (one integer pass instead of two casts):
    bfloat16 keeps float32's exponent range, so a float32 is on its grid iff its low 16 mantissa bits are 0;
    float16 needs the low 13 bits 0 and |v| ≤ 65504 (exact for finite |v| ≥ 2⁻¹⁴; the check only counts
    finite |v| > 1e-3). ``magnitude`` (= |values|, passed by a caller that keeps finite values only) saves
    recomputing it and the NaN test.
    """
    if values.dtype != torch.float32:
        return values.to(grid).to(values.dtype) == values
    bits = values.view(torch.int32)  # numbers as 0-dim int32 / float32 operands (scalar_like): same masks
    low_bits_zero = (bits & scalar_like(_FLOAT32_LOW_BITS[grid], bits)) == scalar_like(0, bits)
    if grid is torch.float16:
        magnitude = values.abs() if magnitude is None else magnitude
        return low_bits_zero & (magnitude <= scalar_like(_FLOAT16_MAX, magnitude))
    if magnitude is not None:  # the caller keeps finite values only (NaN bit patterns can end in 16 zeros)
        return low_bits_zero
    return low_bits_zero & ~torch.isnan(values)


@register(
    "logps.bf16_quantised",
    requires=[(name,) for name in LOGP_NAMES],
    catalog_ids=("32",),
    description="log-probs are not quantised to the bf16/fp16 grid (more than half the tokens exactly on it)",
    tolerance="fraction on the bf16 grid ≤ 0.5 (genuine float32 values land there ~1/65536 of the time)",
    likely_cause="log-softmax computed in bf16 (transformers #31267): quantised log-probs make the ratio "
    "and KL noisy at the 1% level",
    fix="upcast logits to float32 before log_softmax / the gather",
)
def bf16_quantised(step: TraceStep, spec: GRPOSpec | None, *, tolerance: float | None = None) -> Outcome:
    limit = tolerance if tolerance is not None else _QUANTISED_FRACTION
    stack = _logp_stack(step)
    if stack is not None:  # every tensor at once; anything but a clean pass takes the per-tensor path below
        table = _grid_counts_host(stack)  # (1 + grids, K)
        if table is None:
            table = _grid_counts(stack)
        fractions = [
            table[1 + g][k] / table[0][k]
            for k in range(len(stack.names))
            if table[0][k] >= _MIN_TOKENS
            for g in range(len(_GRIDS))
        ]
        if fractions and max(fractions) <= limit:
            return passed(
                f"log-probs not quantised (at most {max(fractions):.1%} on a 16-bit grid)",
                max(fractions),
                limit,
            )
    return _bf16_quantised_per_tensor(step, limit)


_GRIDS = (torch.bfloat16, torch.float16)


def _grid_counts(stack: _LogpStack) -> list[list[int]]:
    """Per tensor of the stack: [tokens judged (valid, |logp| > 1e-3), judged ones on each 16-bit grid of
    ``_GRIDS``] as a (1 + grids, K) table of counts."""
    magnitude = stack.values.abs()
    judged = stack.valid & (magnitude > scalar_like(1e-3, magnitude))
    on_grids = [_on_grid(stack.values, grid, magnitude) for grid in _GRIDS]
    # one reduction over the stacked masks while they stay below torch's parallelisation grain
    if (1 + len(_GRIDS)) * judged.numel() <= _SMALL_SLICE:
        # [judged, grid ∧ judged, ...] with one &: judged ∧ judged is judged
        masks = torch.stack([judged, *on_grids]) & judged
        counts = masks.reshape(1 + len(_GRIDS), len(stack.names), -1).sum(2)
    else:  # large: no stacked copy, one count per tensor
        masks = [judged, *(on_grid & judged for on_grid in on_grids)]
        counts = torch.stack([count_true_per_slice(mask) for mask in masks])
    return counts.tolist()


def _grid_counts_host(stack: _LogpStack) -> list[list[int]] | None:
    """:func:`_grid_counts` of a small float32 CPU stack in numpy: the same comparisons (1e-3 and 65504 as
    float32, as ``scalar_like`` makes them), the same bit tests of the float32 pattern as :func:`_on_grid`
    and exact integer counts; ``None`` without numpy views or for another dtype (the torch path counts)."""
    values, valid = host_view(stack.values), host_view(stack.valid)
    if values is None or valid is None or values.dtype != np.float32 or values.ndim != 3:
        return None
    rows = values.shape[0]
    # the table's three masks written into one array, counted by one add-reduction (in int64: exact)
    masks = np.empty((3, *values.shape), dtype=bool)
    magnitude = np.abs(values)
    judged = np.logical_and(valid, magnitude > _THRESHOLD_F32, out=masks[0])
    low_bits = values.view(np.int32) & _BF16_LOW_BITS  # (the float16 grid's low bits are among them)
    np.logical_and(low_bits == 0, judged, out=masks[1])
    on_float16 = np.logical_and(
        (low_bits & _FLOAT16_LOW_BITS) == 0, magnitude <= _FLOAT16_MAX_F32, out=masks[2]
    )
    on_float16 &= judged
    return np.add.reduce(masks.reshape(3, rows, -1), axis=2).tolist()  # rows in _GRIDS' order


_THRESHOLD_F32 = np.float32(1e-3)
_FLOAT16_MAX_F32 = np.float32(_FLOAT16_MAX)
_BF16_LOW_BITS = np.int32(_FLOAT32_LOW_BITS[torch.bfloat16])
_FLOAT16_LOW_BITS = np.int32(_FLOAT32_LOW_BITS[torch.float16])


def _bf16_quantised_per_tensor(step: TraceStep, limit: float) -> Outcome:
    worst: tuple[float, str, str] | None = None
    for name in LOGP_NAMES:
        tensor = step.get(name)
        if tensor is None or not tensor.is_floating_point():
            continue
        if tensor.dtype in (torch.bfloat16, torch.float16):
            return Outcome(
                Verdict.WARN,
                f"{name} is stored as {tensor.dtype}: log-probs quantised to {machine_eps(tensor.dtype):.2g} relative",
                figure=1.0,
                tolerance=limit,
                details={"tensor": name, "grid": str(tensor.dtype)},
            )
        values = plain(tensor)
        magnitude = values.abs()
        valid = valid_finite(step, tensor) & (magnitude > 1e-3)
        count = count_true(valid)
        if count < _MIN_TOKENS:
            continue
        for grid in (torch.bfloat16, torch.float16):
            on_grid = _on_grid(values, grid, magnitude) & valid
            fraction = float(count_true(on_grid)) / count
            if worst is None or fraction > worst[0]:
                worst = (fraction, name, str(grid))
    if worst is None:
        return inconclusive(f"fewer than {_MIN_TOKENS} valid log-probs with |logp| > 1e-3")
    fraction, name, grid = worst
    if fraction <= limit:
        return passed(f"log-probs not quantised (at most {fraction:.1%} on a 16-bit grid)", fraction, limit)
    return Outcome(
        Verdict.WARN,
        f"{fraction:.1%} of {name} lie exactly on the {grid} grid: computed in 16-bit precision",
        figure=fraction,
        tolerance=limit,
        details={"tensor": name, "grid": grid},
    )


@register(
    "logps.entropies_nonnegative",
    requires=("entropies",),
    description="per-token entropies are ≥ 0 on completion tokens",
    tolerance="64·eps of the dtype × max(1, max H)",
    likely_cause="entropy computed with a sign error or from unnormalised logits (Σ p log p with p not summing to 1)",
    fix="H = −Σ softmax(z)·log_softmax(z) over the vocabulary, in float32",
)
def entropies_nonnegative(
    step: TraceStep, spec: GRPOSpec | None, *, tolerance: float | None = None
) -> Outcome:
    values = f64(step["entropies"])
    valid = valid_finite(step, values)
    if not any_true(valid):
        return inconclusive("no valid entropy")
    scale = max(1.0, masked_abs_max(values, valid))
    allowed = tolerance if tolerance is not None else 64 * machine_eps(step["entropies"].dtype) * scale
    masked = where_fill(valid, -values, -torch.inf)
    row, token = argmax_2d(masked)
    lowest = -float(masked[row] if token is None else masked[row, token])
    if lowest >= -allowed:
        return passed(f"min entropy {fmt(lowest)} ≥ 0", lowest, allowed)
    return Outcome(
        Verdict.FAIL,
        f"{int(((values < -allowed) & valid).sum())} token(s) have negative entropy (min {fmt(lowest)})",
        figure=lowest,
        tolerance=allowed,
        row=row,
        token=token,
    )
