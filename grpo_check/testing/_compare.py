"""Internal: element-wise comparison producing a Finding with GRPO coordinates (assert_close style)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch

from grpo_check._kinds import is_nonnegative_number, is_real_number
from grpo_check.findings import Finding, InputError, Verdict, Where
from grpo_check.tolerance_defaults import DTYPE_DEFAULTS

# torch.testing.assert_close defaults per dtype (rtol, atol)
_DEFAULT_TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    getattr(torch, name): tolerance for name, tolerance in DTYPE_DEFAULTS.items()
}


def default_tolerance(dtype: torch.dtype) -> tuple[float, float]:
    """(rtol, atol) torch.testing.assert_close uses for ``dtype`` (float64's for non-float dtypes)."""
    return _DEFAULT_TOLERANCES.get(dtype, _DEFAULT_TOLERANCES[torch.float64])


def unit_roundoff(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).eps) if dtype.is_floating_point else float(torch.finfo(torch.float64).eps)


def to_tensor(value: Any, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    try:
        return torch.as_tensor(value)
    except Exception as exc:
        raise InputError(
            f"{name} must be a tensor (or convertible to one), got {type(value).__name__}"
        ) from exc


def coordinates(
    index: tuple[int, ...], group_index: torch.Tensor | None, step: int | None, has_token_axis: bool
) -> Where:
    """GRPO coordinates of an element: row -> prompt (group label) and generation (rank inside its group)."""
    row = index[0] if index else None
    prompt = generation = None
    if row is not None and group_index is not None and row < group_index.numel():
        label = group_index[row]
        prompt = int(label)
        generation = int((group_index[:row] == label).sum())
    token = index[1] if has_token_axis and len(index) > 1 else None
    return Where(step=step, prompt=prompt, generation=generation, row=row, token=token)


def compare_tensors(
    actual: Any,
    expected: Any,
    *,
    name: str,
    stage: str,
    check_id: str,
    mask: torch.Tensor | None = None,
    group_index: torch.Tensor | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    extra_tolerance: torch.Tensor | None = None,
    step: int | None = None,
    likely_cause: str | None = None,
    fix: str | None = None,
    catalog_id: str | None = None,
    kind: str = "compare",
    tolerance_dtype: torch.dtype | None = None,
) -> Finding | None:
    """Compare ``actual`` with ``expected`` (float64) element-wise; ``None`` when they agree.

    Allowed difference per element: ``atol + rtol·|expected| (+ extra_tolerance)``; tolerances default to
    torch's for ``tolerance_dtype`` (default: ``actual``'s dtype). NaN agrees only with NaN. Only positions where ``mask`` is true count.
    """
    actual_t = to_tensor(actual, name)
    expected_t = to_tensor(expected, f"expected {name}").double()
    dtype = actual_t.dtype if actual_t.dtype.is_floating_point else torch.float64
    if tolerance_dtype is not None:
        dtype = tolerance_dtype
    default_rtol, default_atol = default_tolerance(dtype)
    rtol = default_rtol if rtol is None else _tolerance_value(rtol, "rtol")
    atol = default_atol if atol is None else _tolerance_value(atol, "atol")
    if actual_t.shape != expected_t.shape:
        if actual_t.numel() == expected_t.numel() and _same_up_to_unit_dims(actual_t.shape, expected_t.shape):
            actual_t = actual_t.reshape(expected_t.shape)
        else:
            return Finding(
                check_id=check_id,
                stage=stage,
                verdict=Verdict.FAIL,
                where=Where(step=step),
                explanation=f"{name} has shape {tuple(actual_t.shape)}, expected {tuple(expected_t.shape)}",
                likely_cause=likely_cause,
                fix=fix,
                catalog_id=catalog_id,
                kind=kind,
                details={"actual_shape": list(actual_t.shape), "expected_shape": list(expected_t.shape)},
            )
    actual_f = actual_t.double()
    compared = torch.ones_like(expected_t, dtype=torch.bool)
    if mask is not None:
        compared = torch.broadcast_to(to_tensor(mask, "mask").to(torch.bool), expected_t.shape)
    allowed = atol + rtol * expected_t.abs()
    if extra_tolerance is not None:
        allowed = allowed + torch.broadcast_to(extra_tolerance.double(), expected_t.shape)
    # a non-finite expected value is matched exactly (NaN by NaN, ±inf by the same inf): no tolerance around
    # it, or a NaN/inf allowance would let any actual value through
    allowed = torch.where(
        torch.isfinite(expected_t) & ~torch.isnan(allowed), allowed, torch.zeros_like(allowed)
    )
    both_nan = torch.isnan(actual_f) & torch.isnan(expected_t)
    same_inf = torch.isinf(actual_f) & torch.isinf(expected_t) & (actual_f == expected_t)
    diff = (actual_f - expected_t).abs()
    diff = torch.where(both_nan | same_inf, torch.zeros_like(diff), diff)
    diff = torch.where(torch.isnan(diff), torch.full_like(diff, float("inf")), diff)
    bad = (diff > allowed) & compared
    n_bad = int(bad.sum())
    if n_bad == 0:
        return None
    n_compared = int(compared.sum())
    score = torch.where(bad, diff / allowed.clamp(min=1e-300), torch.full_like(diff, -1.0))
    flat = int(torch.argmax(torch.nan_to_num(score, posinf=1e308)))
    index = _unravel(flat, tuple(expected_t.shape))
    where = coordinates(
        index, group_index, step, has_token_axis=expected_t.dim() > 1 and expected_t.shape[-1] > 1
    )
    got = float(actual_f[index]) if index else float(actual_f)
    want = float(expected_t[index]) if index else float(expected_t)
    worst_diff = float(diff[index]) if index else float(diff)
    worst_allowed = float(allowed[index]) if index else float(allowed)
    relative = worst_diff / abs(want) if want not in (0.0,) and want == want else float("inf")
    percent = 100.0 * n_bad / max(n_compared, 1)
    where_text = where.describe()
    location = f" at {where_text}" if where_text != "-" else ""
    explanation = (
        f"{name}: {n_bad} of {n_compared} compared element(s) differ ({percent:.3g}%). "
        f"Greatest difference{location}: got {got:.6g}, expected {want:.6g} "
        f"(|diff| {worst_diff:.3g}, allowed {worst_allowed:.3g}; relative diff {relative:.3g}; "
        f"rtol={rtol:.2g}, atol={atol:.2g} for {str(dtype).replace('torch.', '')})."
    )
    mismatches = bad.nonzero().tolist()[:8]
    return Finding(
        check_id=check_id,
        stage=stage,
        verdict=Verdict.FAIL,
        figure=worst_diff,
        tolerance=worst_allowed,
        where=where,
        explanation=explanation,
        likely_cause=likely_cause,
        fix=fix,
        catalog_id=catalog_id,
        kind=kind,
        details={
            "mismatched": n_bad,
            "compared": n_compared,
            "actual": got,
            "expected": want,
            "rtol": rtol,
            "atol": atol,
            "first_mismatches": mismatches,
        },
    )


def _tolerance_value(value: Any, name: str) -> float:
    """``rtol``/``atol`` as a float, or an ``InputError`` for a value that is not a number ≥ 0."""
    if not is_real_number(value):
        raise InputError(f"{name} must be a number >= 0, got {type(value).__name__} {value!r}")
    if not is_nonnegative_number(value):  # also NaN
        raise InputError(f"{name} must be a number >= 0, got {value!r}")
    return float(value)


def _unravel(flat: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Row-major multi-index of a flat position (torch.unravel_index imports sympy: seconds)."""
    index = []
    for size in reversed(shape):
        flat, position = divmod(flat, size)
        index.append(position)
    return tuple(reversed(index))


def _same_up_to_unit_dims(a: torch.Size, b: torch.Size) -> bool:
    return [d for d in a if d != 1] == [d for d in b if d != 1]


# ---------------------------------------------------------------- calling a user function by argument names


def call_by_names(
    fn: Callable[..., Any],
    available: Mapping[str, Any],
    *,
    order: tuple[str, ...],
    aliases: Mapping[str, str] | None = None,
    stage: str,
) -> Any:
    """Call ``fn`` with the arguments it asks for by name (aliases allowed); positional fallback in ``order``.

    Parameters with defaults that match no known name keep their default; ``**kwargs`` receives everything.
    """
    aliases = dict(aliases or {})
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return fn(*(available[n] for n in order))
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    positional_slot = 0
    takes_var_kw = False
    for param in signature.parameters.values():
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            takes_var_kw = True
            continue
        if param.kind is inspect.Parameter.VAR_POSITIONAL:
            continue
        canonical = param.name if param.name in available else aliases.get(param.name)
        if canonical is not None and canonical in available:
            value = available[canonical]
        elif param.default is not inspect.Parameter.empty:
            continue
        elif positional_slot < len(order) and param.kind is not inspect.Parameter.KEYWORD_ONLY:
            value = available[order[positional_slot]]
        else:
            known = ", ".join(sorted({*available, *aliases}))
            raise InputError(
                f"cannot call {getattr(fn, '__name__', fn)!r} for stage {stage!r}: parameter {param.name!r} "
                f"matches no known argument ({known}). Rename it, or wrap your function in a lambda."
            )
        positional_slot += 1
        if param.kind is inspect.Parameter.POSITIONAL_ONLY:
            args.append(value)
        else:
            kwargs[param.name] = value
    if takes_var_kw:
        for name, value in available.items():
            if name not in kwargs:
                kwargs[name] = value
    return fn(*args, **kwargs)
