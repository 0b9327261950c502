"""Element-wise comparison of one trainer tensor with its reference, producing one Finding.

The one tensor-comparison routine: :mod:`grpo_check.compare.stage_findings` calls it once per compared
quantity (batched for the passing ones by :func:`compare_tensors`), and the ``assert_*_close`` assertions of
:mod:`grpo_check.testing` call it for theirs. A mismatch is reported by
:func:`grpo_check.compare.mismatch.mismatch_message`.
"""

from __future__ import annotations

import dataclasses
import math
from itertools import chain
from typing import Any, NamedTuple

import numpy as np
import torch

from grpo_check._step_cache import all_true_like, f64
from grpo_check.compare.mismatch import Extreme, NonFinite, mismatch_message
from grpo_check.compare.tolerances import Tolerance
from grpo_check.findings import Finding, Verdict
from grpo_check.stepref.context import StepContext, as_f64

__all__ = [
    "Comparison",
    "StepContext",
    "as_f64",
    "compare_tensor",
    "compare_tensors",
    "error_map",
    "not_captured",
]

_chain = chain.from_iterable

_MAP_LIMIT = 64  # rows/cols of the token error map kept in details (plots stay small)


def _unravel(index: int, shape: tuple[int, ...]) -> tuple[int | None, int | None]:
    if len(shape) == 0:
        return None, None
    if len(shape) == 1:
        return index, None
    cols = shape[-1]
    return index // cols, index % cols


def error_map(error: torch.Tensor, mask: torch.Tensor) -> list[list[float | None]] | None:
    """(B, T) nested list of |error| on the mask (``None`` = not compared), truncated to a plot-sized window."""
    if error.dim() != 2:
        return None
    shown = torch.nan_to_num(error[:_MAP_LIMIT, :_MAP_LIMIT], nan=float("inf")).tolist()
    kept = mask.expand_as(error)[:_MAP_LIMIT, :_MAP_LIMIT].tolist()
    return [
        [v if k else None for v, k in zip(row, keep, strict=True)]
        for row, keep in zip(shown, kept, strict=True)
    ]


def compare_tensor(
    *,
    check_id: str,
    stage: str,
    name: str,
    trainer: Any,
    reference: Any,
    tolerance: Tolerance,
    ctx: StepContext,
    reference_same_precision: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    what: str = "",
    kind: str = "compare",
    extra_allowance: torch.Tensor | None = None,
    equal_nan: bool = False,
    sides: tuple[str, str] = ("trainer", "reference"),
) -> Finding:
    """Compare ``trainer`` with ``reference`` (both broadcastable to one shape) element-wise.

    Returns one Finding: PASS/WARN/FAIL against ``tolerance``; the figure is the max |error| over the
    compared elements and ``where`` the worst offender. ``details`` carries the max/mean error, the
    fraction out of tolerance, and a ``token_error_map`` for (B, T) quantities.

    Allowed per element: ``max(k × same-precision error, atol + rtol·|reference|) + extra_allowance``.
    A NaN/Inf on a compared element fails, unless ``equal_nan`` and both sides hold the same non-finite
    value. ``sides`` names the two tensors in the message.
    """
    label = what or name
    got = as_f64(trainer)
    want = as_f64(reference)
    if got.shape != want.shape:
        try:
            got, want = torch.broadcast_tensors(got, want)
        except RuntimeError:
            return Finding(
                check_id=check_id,
                stage=stage,
                verdict=Verdict.FAIL,
                where=ctx.where(),
                kind=kind,
                explanation=(
                    f"{label}: {sides[0]} tensor has shape {tuple(as_f64(trainer).shape)}, {sides[1]} "
                    f"{tuple(as_f64(reference).shape)}; they cannot be compared element-wise"
                ),
                fix="record the tensor with the canonical shape (see grpo_check/trace/model.py)",
            )
    compared = ctx.token_mask(got) if mask is None else mask.bool().expand_as(got)
    n = int(compared.sum())
    if n == 0:
        return Finding(
            check_id=check_id,
            stage=stage,
            verdict=Verdict.INCONCLUSIVE,
            where=ctx.where(),
            kind=kind,
            explanation=f"{label}: nothing to compare (every element is masked out)",
        )
    details: dict[str, Any] = {"quantity": name, "compared_elements": n, "tolerance": tolerance.to_dict()}
    tolerance_text = _tolerance_text(tolerance, extra_allowance is not None)

    # 1. NaN/Inf locations before any tolerance.
    got_finite, want_finite = (got - got) == 0, (want - want) == 0  # = torch.isfinite, ~2x faster on CPU
    all_finite = bool(got_finite.all()) and bool(want_finite.all())
    if not all_finite:
        got_bad = ~got_finite & compared
        want_bad = ~want_finite & compared
        mismatch = got_bad | want_bad  # a non-finite trainer value on a compared element always fails
        if equal_nan:  # ... unless both sides hold the same NaN/Inf
            agree = (torch.isnan(got) & torch.isnan(want)) | (torch.isinf(got) & (got == want))
            mismatch = mismatch & ~agree
            compared = compared & ~agree
    if not all_finite and bool(mismatch.any()):
        flat = int(torch.nonzero(mismatch.reshape(-1))[0])
        row, token = _unravel(flat, got.shape)
        where = ctx.where(row=row, token=token)
        count = int(mismatch.sum())
        side = sides[0] if bool(got_bad.reshape(-1)[flat]) else sides[1]
        both = bool((got_bad & want_bad & mismatch).any())
        details.update(nonfinite_elements=count, nonfinite_side=side, nonfinite_in_both=both)
        return Finding(
            check_id=check_id,
            stage=stage,
            verdict=Verdict.FAIL,
            figure=float(count),
            tolerance=0.0,
            where=where,
            kind=kind,
            details=details,
            explanation=mismatch_message(
                label,
                mismatched=count,
                compared=n,
                nonfinite=NonFinite(
                    count=count,
                    where=where,
                    actual=float(got.reshape(-1)[flat]),
                    expected=float(want.reshape(-1)[flat]),
                    side=side,
                    inherited=both,
                ),
                sides=sides,
            ),
        )
    both_finite = compared if all_finite else compared & got_finite & want_finite
    if not bool(both_finite.any()):  # every compared element agreed as the same NaN/Inf
        return _agreeing_nonfinite(check_id, stage, kind, label, n, ctx, details)

    # 2. Tolerance per element (every use of error/allowed below is masked by both_finite).
    error = (got - want).abs()
    want_abs = want.abs()
    allowed = tolerance.atol + tolerance.rtol * want_abs
    same_precision_error = None
    if reference_same_precision is not None:
        sp = as_f64(reference_same_precision).expand_as(want)
        sp_err = torch.where(both_finite, (sp - want).abs(), torch.zeros_like(want))
        sp_err = torch.nan_to_num(sp_err, nan=0.0, posinf=0.0)
        same_precision_error = float(sp_err.max())
        allowed = torch.maximum(allowed, tolerance.k * sp_err.max().expand_as(allowed))
        details["same_precision_max_error"] = same_precision_error
    if extra_allowance is not None:
        allowed = allowed + torch.broadcast_to(as_f64(extra_allowance), allowed.shape)
        allowed = torch.where(torch.isnan(allowed), torch.zeros_like(allowed), allowed)
    beyond = (error > allowed) & both_finite
    n_beyond = int(beyond.sum())
    frac_beyond = n_beyond / n
    masked_error = torch.where(both_finite, error, torch.full_like(error, -1.0))
    flat = int(torch.argmax(masked_error.reshape(-1)))
    row, token = _unravel(flat, got.shape)
    max_error = float(error.reshape(-1)[flat])
    allowed_at_worst = float(allowed.reshape(-1)[flat])
    worst_rel = flat
    if n_beyond:  # the worst offender relative to its allowance (for the figure we report max |error|)
        ratio_to_allowed = (error / allowed.clamp_min(1e-300)).masked_fill(~both_finite, 0.0)
        worst_rel = int(torch.argmax(ratio_to_allowed.reshape(-1)))
        row, token = _unravel(worst_rel, got.shape)
        max_error_rel = float(error.reshape(-1)[worst_rel])
        allowed_at_worst = float(allowed.reshape(-1)[worst_rel])
    else:
        max_error_rel = max_error
    ref_scale = float(want_abs.masked_fill(~both_finite, 0.0).max())
    details.update(
        max_abs_error=max_error,
        mean_abs_error=float(error[both_finite].mean()),  # n > 0 compared elements, all finite here
        reference_max_abs=ref_scale,
        max_rel_error=max_error / ref_scale if ref_scale > 0 else None,
        elements_beyond_tolerance=n_beyond,
        fraction_beyond_tolerance=frac_beyond,
        outlier_budget=tolerance.outlier_fraction,
    )
    emap = error_map(error, both_finite) if n_beyond else None
    if emap is not None:
        details["token_error_map"] = emap
        if ctx.group_index is not None and ctx.group_index.numel() == got.shape[0]:
            details["token_error_map_prompts"] = ctx._group_list()[:_MAP_LIMIT]  # row → prompt, for the plot
    where = ctx.where(row=row, token=token)
    if n_beyond == 0:
        verdict = Verdict.PASS
        explanation = (
            f"{label} matches the reference: max |error| {max_error:.3g} over {n} element(s) "
            f"(allowed {allowed_at_worst:.3g} there)"
        )
    else:
        verdict = Verdict.FAIL if frac_beyond > tolerance.outlier_fraction else Verdict.WARN
        explanation = mismatch_message(
            label,
            mismatched=n_beyond,
            compared=n,
            greatest_absolute=_extreme(flat, error, allowed, got, want, ctx),
            greatest_relative=_greatest_relative(error, allowed, got, want, both_finite, ctx),
            tolerance=tolerance_text,
            outlier_budget=tolerance.outlier_fraction,
            sides=sides,
        )
    return Finding(
        check_id=check_id,
        stage=stage,
        verdict=verdict,
        figure=max_error_rel if n_beyond else max_error,
        tolerance=allowed_at_worst,
        where=where,
        kind=kind,
        details=details,
        explanation=explanation,
    )


def _tolerance_text(tolerance: Tolerance, extra: bool) -> str:
    parts = [f"rtol {tolerance.rtol:.2g}, atol {tolerance.atol:.2g}"]
    if tolerance.k != 1.0:
        parts.append(f"or {tolerance.k:g}× a same-precision reference's error")
    if extra:
        parts.append("plus the rounding error of a correct computation in that precision")
    source = f" ({tolerance.source})" if tolerance.source and tolerance.source != "default" else ""
    return ", ".join(parts) + source


def _extreme(
    flat: int,
    error: torch.Tensor,
    allowed: torch.Tensor,
    got: torch.Tensor,
    want: torch.Tensor,
    ctx: StepContext,
) -> Extreme:
    row, token = _unravel(flat, got.shape)
    return Extreme(
        difference=float(error.reshape(-1)[flat]),
        allowed=float(allowed.reshape(-1)[flat]),
        where=ctx.where(row=row, token=token),
        actual=float(got.reshape(-1)[flat]),
        expected=float(want.reshape(-1)[flat]),
    )


def _greatest_relative(
    error: torch.Tensor,
    allowed: torch.Tensor,
    got: torch.Tensor,
    want: torch.Tensor,
    both_finite: torch.Tensor,
    ctx: StepContext,
) -> Extreme:
    """The element with the greatest |difference| / |reference| (a zero reference counts as infinitely far)."""
    scale = want.abs()
    relative = torch.where(scale > 0, error / scale.clamp_min(1e-300), torch.where(error > 0, torch.inf, 0.0))
    relative = relative.masked_fill(~both_finite, -1.0)
    flat = int(torch.argmax(relative.reshape(-1)))
    extreme = _extreme(flat, error, allowed, got, want, ctx)
    reference = abs(extreme.expected)
    return dataclasses.replace(
        extreme,
        difference=float(relative.reshape(-1)[flat]),
        allowed=extreme.allowed / reference if reference > 0 else math.inf,
    )


def _agreeing_nonfinite(
    check_id: str, stage: str, kind: str, label: str, n: int, ctx: StepContext, details: dict[str, Any]
) -> Finding:
    details.update(max_abs_error=0.0, elements_beyond_tolerance=0, fraction_beyond_tolerance=0.0)
    return Finding(
        check_id=check_id,
        stage=stage,
        verdict=Verdict.PASS,
        figure=0.0,
        tolerance=0.0,
        where=ctx.where(),
        kind=kind,
        details=details,
        explanation=f"{label} matches the reference: all {n} compared element(s) are the same NaN/Inf on both sides",
    )


@dataclasses.dataclass
class Comparison:
    """One requested comparison: the keyword arguments of :func:`compare_tensor` (without ``ctx``)."""

    check_id: str
    stage: str
    name: str
    trainer: Any
    reference: Any
    tolerance: Tolerance
    mask: torch.Tensor | None = None
    what: str = ""
    kind: str = "compare"
    reference_same_precision: torch.Tensor | None = None

    def run(self, ctx: StepContext) -> Finding:
        """The full element-wise comparison (:func:`compare_tensor`)."""
        return compare_tensor(ctx=ctx, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)})


def compare_tensors(comparisons: list[Comparison], ctx: StepContext) -> list[Finding]:
    """:func:`compare_tensor` for each comparison, in order, with the passing ones evaluated together.

    Comparisons of one shape are stacked and summarised by one set of batched reductions (max error, its
    position, allowance there, mean error, reference scale), fetched in a single transfer; a comparison whose
    summary shows anything but a clean pass (an element beyond tolerance, NaN/Inf, nothing compared, a shape
    mismatch, a low-precision allowance) is re-run through :func:`compare_tensor`, so failures get its full
    diagnostics. A pass gives the same finding :func:`compare_tensor` gives, up to float rounding of the mean.
    """
    if not comparisons:
        return []
    results: list[Finding | None] = [None] * len(comparisons)
    # per shape: (index, trainer tensor, reference tensor, mask, tolerance) of each of its comparisons
    by_shape: dict[tuple[int, ...], list[tuple[int, torch.Tensor, torch.Tensor, Any, Tolerance]]] = {}
    token_masks: dict[tuple[Any, ...], torch.Tensor] = {}  # the context's default mask per shape and device
    for index, comparison in enumerate(comparisons):
        prepared = _prepare(comparison, ctx, token_masks)
        elements = 0 if prepared is None else prepared[0].numel()
        if elements == 0:  # the full path (also for an empty step: "nothing to compare")
            results[index] = comparison.run(ctx)
            continue
        got, want, compared = prepared
        shape = tuple(got.shape)
        if elements == 1:  # a scalar (the loss, its normaliser): summarised in Python, exactly as below
            summary = _summarise_scalar(got, want, compared, comparison.tolerance)
            results[index] = _judged(comparison, summary, shape, ctx)
            continue
        member = (index, got, want, compared, comparison.tolerance)
        group = by_shape.get(shape)
        if group is None:
            by_shape[shape] = [member]
        else:
            group.append(member)
    for shape, group in by_shape.items():
        indices, gots, wants, masks, tolerances = map(list, zip(*group, strict=True))
        summaries = _summarise(gots, wants, masks, tolerances)
        for index, summary in zip(indices, summaries, strict=True):
            results[index] = _judged(comparisons[index], summary, shape, ctx)
    return results  # type: ignore[return-value]  (every slot is filled above)


def _judged(comparison: Comparison, summary: _Summary, shape: tuple[int, ...], ctx: StepContext) -> Finding:
    """The PASS finding :func:`compare_tensor` builds, from a clean summary; anything else re-runs
    :func:`compare_tensor` for its diagnostics."""
    beyond, n, error_sum, ref_scale, max_error, allowed, worst = summary  # (one unpacking, no field lookups)
    # x − x == 0: finite (an infinite or NaN x gives NaN), without a math.isfinite call
    if not (n > 0 and beyond == 0 and max_error - max_error == 0 and ref_scale - ref_scale == 0):
        return comparison.run(ctx)
    tolerance = comparison.tolerance
    dims = len(shape)
    if dims == 1:  # _unravel, inlined
        row, token = worst, None
    elif dims == 0:
        row = token = None
    else:
        row, token = divmod(worst, shape[-1])
    return Finding(
        check_id=comparison.check_id,
        stage=comparison.stage,
        verdict=Verdict.PASS,
        figure=max_error,
        tolerance=allowed,
        where=ctx.where(row=row, token=token),
        kind=comparison.kind,
        details={
            "quantity": comparison.name,
            "compared_elements": n,
            "tolerance": tolerance.to_dict(),
            "max_abs_error": max_error,
            "mean_abs_error": error_sum / n,
            "reference_max_abs": ref_scale,
            "max_rel_error": max_error / ref_scale if ref_scale > 0 else None,
            "elements_beyond_tolerance": 0,
            "fraction_beyond_tolerance": 0.0,
            "outlier_budget": tolerance.outlier_fraction,
        },
        explanation=(
            f"{comparison.what or comparison.name} matches the reference: max |error| {max_error:.3g} over {n} "
            f"element(s) (allowed {allowed:.3g} there)"
        ),
    )


def _scalar(tensor: torch.Tensor) -> Any:
    """The one element of a one-element tensor as a Python number (``tolist``: no operation dispatched)."""
    value = tensor.tolist()
    while type(value) is list:
        value = value[0]
    return value


def _summarise_scalar(
    got: torch.Tensor, want: torch.Tensor, compared: torch.Tensor | None, tolerance: Tolerance
) -> _Summary:
    """:func:`_summarise_numpy` for one element, in Python floats (IEEE float64 like numpy's): the same
    |error|, allowance (|reference|·rtol + atol), NaN handling and sums (a one-element sum is the element)."""
    trainer, reference = float(_scalar(got)), float(_scalar(want))
    selected = True if compared is None else bool(_scalar(compared))
    error = abs(trainer - reference)
    allowed = abs(reference) * tolerance.rtol + tolerance.atol
    masked_error = error if selected else -1.0
    return _Summary(
        beyond=int(error > allowed and selected),  # NaN |error| is not beyond (see max_error)
        compared=int(selected),
        error_sum=masked_error if math.isnan(masked_error) else max(masked_error, 0.0),
        reference_max_abs=abs(reference) if selected else 0.0,
        max_error=error,
        allowed_at_worst=allowed,
        worst=0,
    )


def _prepare(
    comparison: Comparison, ctx: StepContext, token_masks: dict[tuple[Any, ...], torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None:
    """(trainer, reference, compared mask) detached at one shape (any float dtype: :func:`_summarise`
    converts while stacking; mask ``None``: every element), or ``None`` for the full path.
    ``token_masks``: the context's default mask by shape and device, looked up once per
    :func:`compare_tensors` call."""
    if comparison.reference_same_precision is not None:
        return None
    got, want = comparison.trainer, comparison.reference
    if type(got) is not torch.Tensor or type(want) is not torch.Tensor:
        got, want = _detached(got), _detached(want)
    else:
        if got.requires_grad:
            got = got.detach()
        if want.requires_grad:
            want = want.detach()
    if not (got.dtype.is_floating_point and want.dtype.is_floating_point):
        got, want = got.double(), want.double()
    if got.shape != want.shape:
        try:
            got, want = torch.broadcast_tensors(got, want)
        except RuntimeError:
            return None
    mask = comparison.mask
    if mask is None:
        if got.dim() != 2:  # no (B, T) grid: the context's default mask is every element (``None`` here)
            return got, want, None
        key = (*got.shape, got.device)
        compared = token_masks.get(key)
        if compared is None:
            compared = token_masks[key] = ctx.token_mask(got)
    elif mask.dtype is torch.bool and mask.shape == got.shape:  # as expand_as would give it, without the view
        compared = mask
    else:
        try:
            compared = mask.bool().expand_as(got)
        except RuntimeError:
            return None
    if compared.shape != got.shape:
        return None
    return got, want, compared


def _detached(tensor: Any) -> torch.Tensor:
    tensor = tensor if isinstance(tensor, torch.Tensor) else torch.as_tensor(tensor)
    return tensor.detach() if tensor.requires_grad else tensor


class _Summary(NamedTuple):  # a NamedTuple: built per comparison on the hot path, cheaply
    beyond: int  # compared elements with |error| > allowed (NaN |error| is not counted: see max_error)
    compared: int
    error_sum: float
    reference_max_abs: float
    max_error: float
    allowed_at_worst: float
    worst: int  # flat index of the largest |error|


def _summaries(table: list[list[float]]) -> list[_Summary]:
    """One :class:`_Summary` per row of the (K, 7) table both summary paths fetch (counts and index as ints)."""
    return [_Summary(int(row[0]), int(row[1]), row[2], row[3], row[4], row[5], int(row[6])) for row in table]


# Up to this many elements per row, one batched operation beats one operation per row (per-call overhead
# dominates); above it, per-row passes win (a bool reduction along dim 1 is ~10x slower than count_nonzero).
_SMALL_ROW = 32_768


def _rows_f64(tensors: list[torch.Tensor]) -> torch.Tensor:
    """(K, N) float64: each tensor flattened into one row (large rows converted while copied, one pass)."""
    if len(tensors) == 1:
        return f64(tensors[0]).reshape(1, -1)  # the step's float64 copy when a step cache holds one
    if tensors[0].numel() <= _SMALL_ROW:
        return torch.stack(tensors).reshape(len(tensors), -1).double()
    out = torch.empty((len(tensors), tensors[0].numel()), dtype=torch.float64, device=tensors[0].device)
    for row, tensor in zip(out, tensors, strict=True):
        row.copy_(tensor.reshape(-1))
    return out


def _row_counts(mask: torch.Tensor) -> torch.Tensor:
    """(K, 1) float64 count of True per row of a (K, N) bool mask."""
    if mask.shape[1] <= _SMALL_ROW:
        return mask.sum(1, keepdim=True, dtype=torch.float64)
    return torch.stack([row.count_nonzero() for row in mask]).double().unsqueeze(1)


def _summarise(
    got: list[torch.Tensor],
    want: list[torch.Tensor],
    compared: list[torch.Tensor | None],
    tolerances: list[Tolerance],
) -> list[_Summary]:
    """Batched reductions over K same-shaped comparisons; one host transfer for all of them. Large rows are
    summarised one comparison at a time instead: batching saves nothing there, and stacking would copy them."""
    size = got[0].numel()
    if len(got) > 1 and size > _SMALL_ROW:
        return [
            summary
            for one in zip(got, want, compared, tolerances, strict=True)
            for summary in _summarise(*([part] for part in one))
        ]
    elements = len(got) * size
    if elements <= _NUMPY_ELEMENTS and _all_on_cpu(got) and _all_on_cpu(want):
        if elements <= _PYTHON_ELEMENTS:
            return _summarise_python(got, want, compared, tolerances)
        return _summarise_numpy(got, want, _masks(got, compared), tolerances)
    compared = _masks(got, compared)
    trainer, reference = _rows_f64(got), _rows_f64(want)  # (K, N)
    mask = (
        compared[0].reshape(1, -1) if len(compared) == 1 else torch.stack([c.reshape(-1) for c in compared])
    )
    bounds = torch.tensor([[t.rtol, t.atol] for t in tolerances], dtype=torch.float64)  # (K, 2)
    error = torch.sub(trainer, reference).abs_()
    reference_abs = reference.abs()
    allowed = (
        reference_abs * bounds[:, :1] + bounds[:, 1:]
    )  # atol + rtol·|reference|, rounded as compare_tensor
    # beyond tolerance; a NaN |error| shows as the max error instead (argmax propagates NaN), an infinite
    # reference as reference_max_abs
    beyond = torch.gt(error, allowed).logical_and_(mask)
    masked_error = torch.where(mask, error, -1.0)
    worst = masked_error.argmax(1, keepdim=True)  # (K, 1)
    # one gather each: stacking the two (K, N) tensors into one (K, 2, N) copy to gather once costs more than
    # one more small call at the sizes this path sees (K·N above _NUMPY_ELEMENTS)
    at_worst = (error, allowed)
    values_at_worst = torch.cat([values.gather(1, worst) for values in at_worst], dim=1)
    table = torch.cat(
        [
            _row_counts(beyond),
            _row_counts(mask),
            masked_error.clamp_min_(0.0).sum(1, keepdim=True),  # Σ |error| over the compared elements
            torch.where(mask, reference_abs, 0.0).amax(1, keepdim=True),
            values_at_worst,  # |error| and allowed at the worst element
            worst.double(),
        ],
        dim=1,
    ).tolist()
    return _summaries(table)


def _masks(got: list[torch.Tensor], compared: list[torch.Tensor | None]) -> list[torch.Tensor]:
    """The compared masks, ``None`` (every element) as the all-True mask of its tensor's shape."""
    for mask in compared:  # (no `None in compared`: that would compare tensors with None)
        if mask is None:
            break
    else:
        return compared  # type: ignore[return-value]
    return [
        all_true_like(tensor) if mask is None else mask for tensor, mask in zip(got, compared, strict=True)
    ]


def _all_on_cpu(tensors: list[torch.Tensor]) -> bool:
    """Whether every tensor is on the CPU (a loop over ``is_cpu``: no device object per tensor)."""
    for tensor in tensors:  # noqa: SIM110 (a loop, not all(genexpr): this runs for every comparison group)
        if not tensor.is_cpu:
            return False
    return True


# the dtypes numpy holds as they are: float64 itself, and the float dtypes it widens to float64 exactly
_HOST_DTYPES = frozenset({torch.float64, torch.float32, torch.float16, torch.bool})


def _host_rows(tensors: list[torch.Tensor], float64: bool = True) -> np.ndarray:
    """(K, N) numpy array of K same-shaped CPU tensors outside any graph, flattened in torch's element order:
    one stack (none for one tensor), one host view; other dtypes (bfloat16) as float64 first. ``float64``:
    float16/float32 widened by numpy (exactly, as torch's .double()); else bool stays bool."""
    stacked = tensors[0] if len(tensors) == 1 else torch.stack(tensors)
    dtype = stacked.dtype
    if dtype not in _HOST_DTYPES:
        stacked = stacked.double()
    rows = stacked.numpy().reshape(len(tensors), -1)
    return rows.astype(np.float64) if float64 and dtype is not torch.float64 else rows


# Up to this many elements in all, the summary runs in numpy: the same float64 arithmetic at a few times
# less per-call overhead (each op here is a few microseconds of dispatch on tensors this small); above it,
# torch's kernels (multi-threaded) win.
_NUMPY_ELEMENTS = 16_384


def _bounds(tolerances: list[Tolerance]) -> tuple[np.ndarray, np.ndarray, bool]:
    """(K, 1) float64 columns of rtol and of atol per comparison (read only), and whether every rtol and atol is
    ≥ 0; built once per list of tolerance objects (the default policy's tolerances are shared between steps,
    and a :class:`Tolerance` is frozen)."""
    key = tuple(map(id, tolerances))
    hit = _BOUNDS.get(key)
    if hit is not None and hit[0] == tolerances:  # the same objects (identity first), not a reused id
        return hit[1]
    rtol = np.array([[t.rtol] for t in tolerances], dtype=np.float64)
    atol = np.array([[t.atol] for t in tolerances], dtype=np.float64)
    rtol.flags.writeable = atol.flags.writeable = False
    nonnegative = all(t.rtol >= 0 and t.atol >= 0 for t in tolerances)  # (NaN is not)
    if len(_BOUNDS) >= _BOUNDS_MAX:
        _BOUNDS.clear()
    # the entry holds the objects: their ids stay theirs
    _BOUNDS[key] = (list(tolerances), (rtol, atol, nonnegative))
    return rtol, atol, nonnegative


_BOUNDS: dict[tuple[int, ...], tuple[list[Tolerance], tuple[np.ndarray, np.ndarray, bool]]] = {}
_BOUNDS_MAX = 256


def _row_starts(rows: int, columns: int) -> np.ndarray:
    """The flat index of each row's first element in a (rows, columns) row-major table (read only; one array
    per table shape)."""
    starts = _ROW_STARTS.get((rows, columns))
    if starts is None:
        starts = np.arange(0, rows * columns, columns)
        starts.flags.writeable = False
        if len(_ROW_STARTS) >= _BOUNDS_MAX:
            _ROW_STARTS.clear()
        _ROW_STARTS[rows, columns] = starts
    return starts


_ROW_STARTS: dict[tuple[int, int], np.ndarray] = {}


# no invalid-operation warnings: inf − inf (and inf·0 for rtol 0) are NaN, as in torch, silently (as a
# decorator: the error state is set per call without a context manager object per call)
@np.errstate(invalid="ignore")
def _summarise_numpy(
    got: list[torch.Tensor],
    want: list[torch.Tensor],
    compared: list[torch.Tensor],
    tolerances: list[Tolerance],
) -> list[_Summary]:
    """:func:`_summarise` on CPU tensors through numpy views, operation for operation: the same float64
    values, NaN handling and first-index ties."""
    rows = len(got)
    reference = _host_rows(want)  # float64 (a view of float64 tensors)
    # float64 (widened exactly, as torch's .double()): a same-dtype subtraction below is cheaper than a mixed one
    trainer = _host_rows(got)
    mask = _host_rows(compared, float64=False)
    if mask.dtype != np.bool_:
        mask = mask != 0
    rtol, atol, nonnegative = _bounds(tolerances)  # (K, 1) each
    error = np.abs(trainer - reference)
    reference_abs = np.abs(reference)
    allowed = reference_abs * rtol  # atol + rtol·|reference|, as compare_tensor (no fused multiply-add)
    allowed += atol
    masked_error = np.where(mask, error, -1.0)
    # beyond tolerance on the compared elements; NaN |error| is not beyond: it shows as the max error (argmax).
    # With every rtol, atol ≥ 0 each allowance is ≥ 0 or NaN, so the −1 of an element not compared is not
    # beyond it: the masked |error| needs no mask of its own
    beyond = masked_error > allowed if nonnegative else (error > allowed) & mask
    worst = masked_error.argmax(1)  # first index of the largest value; NaN counts as the largest
    # the worst element's flat position in each (contiguous) row-major table: one plain take per table, cheaper
    # than a (row, column) fancy index
    at = _row_starts(rows, masked_error.shape[1]) + worst
    # one list per column, zipped into rows: cheaper than stacking the columns into one float array first
    return list(
        map(
            _Summary._make,
            zip(
                # the ufuncs' reductions that ndarray.sum/.max call, without their Python wrappers
                # counts: bool sums in the platform's index integer, named (no type resolution per call)
                np.add.reduce(beyond, axis=1, dtype=np.intp).tolist(),
                np.add.reduce(mask, axis=1, dtype=np.intp).tolist(),
                np.add.reduce(np.maximum(masked_error, 0.0), axis=1).tolist(),  # Σ |error| over compared
                # max over the compared |reference| and 0 (a NaN sticks): where(mask, |reference|, 0).max(1)
                np.maximum.reduce(reference_abs, axis=1, where=mask, initial=0.0).tolist(),
                error.ravel()[at].tolist(),
                allowed.ravel()[at].tolist(),
                worst.tolist(),
                strict=True,
            ),
        )
    )


# Up to this many elements in all, the summary runs element by element in Python floats (IEEE float64,
# like numpy's): a few numpy calls cost more than a loop over a handful of elements.
_PYTHON_ELEMENTS = 64


def _flat_list(tensor: torch.Tensor) -> list[Any]:
    """``tensor``'s elements as a flat Python list in torch's element order (``tolist``: no operation
    dispatched; float16/bfloat16/float32 values widen to Python floats exactly)."""
    values = tensor.tolist()
    dims = tensor.dim()
    if dims == 1:
        return values
    if dims == 0:
        return [values]
    for _ in range(dims - 1):
        values = list(_chain(values))
    return values


def _summarise_python(
    got: list[torch.Tensor],
    want: list[torch.Tensor],
    compared: list[torch.Tensor | None],
    tolerances: list[Tolerance],
) -> list[_Summary]:
    """:func:`_summarise_numpy` element by element, for a few elements: the same float64 operations (|error|,
    atol + rtol·|reference|), the same NaN handling and first-index ties, and the error sums by numpy's
    reduction over the same (K, N) float64 table, so in the same order."""
    table: list[list[float]] = []  # max(masked |error|, 0) per element: what _summarise_numpy sums
    rows: list[tuple[int, int, float, float, float, int]] = []
    for trainer, reference, mask, tolerance in zip(got, want, compared, tolerances, strict=True):
        rtol, atol = tolerance.rtol, tolerance.atol
        trainer_values, reference_values = _flat_list(trainer), _flat_list(reference)
        mask_values = [True] * len(trainer_values) if mask is None else _flat_list(mask)
        summed = [0.0] * len(trainer_values)
        beyond = count = 0
        reference_max = 0.0  # np.maximum.reduce over where(mask, |reference|, 0): a NaN sticks
        largest, worst = 0.0, -1  # np.argmax over where(mask, |error|, -1): the first NaN, else the first max
        for index, (value, expected, selected) in enumerate(
            zip(trainer_values, reference_values, mask_values, strict=True)
        ):
            error = abs(value - expected)
            if selected:
                count += 1
                magnitude = abs(expected)
                if error > magnitude * rtol + atol:
                    beyond += 1
                if not magnitude <= reference_max and reference_max == reference_max:
                    reference_max = magnitude
                masked = summed[index] = error
            else:
                masked = -1.0
            if worst < 0 or (not masked <= largest and largest == largest):
                largest, worst = masked, index
        table.append(summed)
        value, expected = trainer_values[worst], reference_values[worst]
        rows.append((beyond, count, reference_max, abs(value - expected), abs(expected) * rtol + atol, worst))
    sums = np.add.reduce(np.array(table, dtype=np.float64), axis=1).tolist()
    return [
        _Summary(beyond, count, total, reference_max, max_error, allowed, worst)
        for (beyond, count, reference_max, max_error, allowed, worst), total in zip(rows, sums, strict=True)
    ]


def not_captured(
    check_id: str, stage: str, ctx: StepContext, missing: list[str], kind: str = "compare"
) -> Finding:
    return Finding(
        check_id=check_id,
        stage=stage,
        verdict=Verdict.NOT_CAPTURED,
        where=ctx.where(),
        kind=kind,
        explanation=f"not captured: {', '.join(missing)} (record them to compare this stage)",
        details={"missing": missing},
    )
