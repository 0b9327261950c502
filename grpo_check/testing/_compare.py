"""Internal: the assertions' tolerances (torch.testing's per dtype) around the one tensor comparison of
:mod:`grpo_check.compare.tensor_diff`, and calling a user's function by argument names."""

from __future__ import annotations

import dataclasses
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


def to_tensor(value: Any, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    try:
        return torch.as_tensor(value)
    except Exception as exc:
        raise InputError(
            f"{name} must be a tensor (or convertible to one), got {type(value).__name__}"
        ) from exc


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

    The comparison is :func:`grpo_check.compare.tensor_diff.compare_tensor` (the one the CLI runs), held to
    ``atol + rtol·|expected| (+ extra_tolerance)``; tolerances default to torch's for ``tolerance_dtype``
    (default: ``actual``'s dtype). NaN agrees only with NaN. Only positions where ``mask`` is true count.
    """
    from grpo_check.compare.tensor_diff import StepContext, compare_tensor
    from grpo_check.compare.tolerances import Tolerance

    actual_t = to_tensor(actual, name)
    expected_t = to_tensor(expected, f"expected {name}").double()
    dtype = actual_t.dtype if actual_t.dtype.is_floating_point else torch.float64
    if tolerance_dtype is not None:
        dtype = tolerance_dtype
    default_rtol, default_atol = default_tolerance(dtype)
    rtol = default_rtol if rtol is None else tolerance_value(rtol, "rtol")
    atol = default_atol if atol is None else tolerance_value(atol, "atol")
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
    compared = None
    if mask is not None:
        compared = torch.broadcast_to(to_tensor(mask, "mask").to(torch.bool), expected_t.shape)
    elif expected_t.dim() == 0:
        compared = torch.ones_like(expected_t, dtype=torch.bool)
    per_row_only = expected_t.dim() > 1 and expected_t.shape[-1] == 1  # (B, 1): a row has no token axis
    finding = compare_tensor(
        check_id=check_id,
        stage=stage,
        name=name,
        trainer=actual_t,
        reference=expected_t,
        tolerance=Tolerance(
            rtol=rtol, atol=atol, source=f"torch.testing defaults for {str(dtype).removeprefix('torch.')}"
        ),
        ctx=StepContext(
            step=step, group_index=None if group_index is None else to_tensor(group_index, "group_index")
        ),
        mask=compared,
        kind=kind,
        extra_allowance=extra_tolerance,
        equal_nan=True,
        sides=("actual", "expected"),
    )
    if finding.verdict in (Verdict.PASS, Verdict.INCONCLUSIVE):
        return None
    if per_row_only and finding.where.token is not None:
        finding.where = dataclasses.replace(finding.where, token=None)
    finding.likely_cause, finding.fix, finding.catalog_id = likely_cause, fix, catalog_id
    return finding


def tolerance_value(value: Any, name: str) -> float:
    """``rtol``/``atol`` as a float, or an ``InputError`` for a value that is not a number ≥ 0."""
    if not is_real_number(value):
        raise InputError(f"{name} must be a number >= 0, got {type(value).__name__} {value!r}")
    if not is_nonnegative_number(value):  # also NaN
        raise InputError(f"{name} must be a number >= 0, got {value!r}")
    return float(value)


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
