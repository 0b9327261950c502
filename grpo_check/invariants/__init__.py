"""Invariants: named checks that run on ONE implementation's tensors alone (no reference needed).

Every check has a stable id ``"<stage>.<name>"``, declares the tensors it needs (``NOT_CAPTURED`` when they
are absent, never a failure), returns ``INCONCLUSIVE`` when it cannot decide, and reports the measured figure,
the tolerance it was held to and the worst offender in GRPO coordinates (step, prompt, generation, token).

Run them on a captured step or a whole trace::

    >>> import torch
    >>> from grpo_check.trace.model import TraceStep
    >>> from grpo_check.invariants import run_invariants
    >>> step = TraceStep(tensors={"advantages": torch.tensor([1.0, -1.0, 0.5, 0.5]),
    ...                           "group_index": torch.tensor([0, 0, 1, 1])})
    >>> [(f.check_id, f.verdict.value) for f in run_invariants(step, checks=["advantages.group_sum_zero"])]
    [('advantages.group_sum_zero', 'fail')]

or as assertions on plain tensors (raise :class:`~grpo_check.findings.GRPOCheckError` with an
assert_close-style message)::

    >>> from grpo_check.invariants import assert_group_sum_zero
    >>> assert_group_sum_zero(advantages=torch.tensor([1.0, -1.0]), group_index=torch.tensor([0, 0])).verdict.value
    'pass'

Each ``assert_<name>`` (and ``assert_<stage>_<name>``, always unique) takes an optional positional
``TraceStep`` plus keyword inputs: tensors by canonical name (lists are converted), ``completion_text``,
``meta=`` (a dict) or single meta keys (``eos_token_ids=``, ``step=``, ...), and ``spec=``, ``tolerance=``,
``strict=`` (also raise on WARN).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

import torch

from grpo_check._kinds import is_nonnegative_number
from grpo_check.config import GRPOSpec, as_spec
from grpo_check.findings import STAGES, Finding, GRPOCheckError, InputError, Verdict, severity
from grpo_check.invariants import advantages, batch, grad, kl, logps, loss, ratio, rewards, text  # noqa: F401 (register)
from grpo_check.invariants.registry import (
    REGISTRY,
    Check,
    get,
    register,
    run_invariants,
    select,
    where_in_step,
)
from grpo_check.trace.model import TENSOR_STAGE, TraceStep

_TEXT_KEYS = ("completion_text", "prompt_text")


def _order_registry() -> None:
    """Registry (and hence run/report) order follows the pipeline: batch, rewards, advantages, ... grad."""
    order = {stage: index for index, stage in enumerate(STAGES)}
    checks = sorted(REGISTRY.values(), key=lambda c: order.get(c.stage, len(order)))
    REGISTRY.clear()
    REGISTRY.update((c.id, c) for c in checks)


_order_registry()


def build_step(step: TraceStep | None = None, /, **inputs: Any) -> TraceStep:
    """A ``TraceStep`` from keyword inputs (overlaid on a copy of ``step`` when given).

    Tensors (and lists for canonical tensor names) become tensors; ``completion_text``/``prompt_text``
    become text; ``meta=`` merges a dict; any other keyword becomes a meta key.

    >>> build_step(advantages=[0.5, -0.5], eos_token_ids=[2]).meta
    {'eos_token_ids': [2]}
    """
    out = TraceStep(
        tensors=dict(step.tensors) if step is not None else {},
        completion_text=step.completion_text if step is not None else None,
        prompt_text=step.prompt_text if step is not None else None,
        meta=dict(step.meta) if step is not None else {},
    )
    for key, value in inputs.items():
        if value is None:
            continue
        if key == "meta":
            out.meta.update(value)
        elif key in _TEXT_KEYS:
            setattr(out, key, list(value))
        elif isinstance(value, torch.Tensor):
            out.tensors[key] = value
        elif key in TENSOR_STAGE:
            out.tensors[key] = torch.as_tensor(value)
        else:
            out.meta[key] = value
    return out


def check_step(
    check_id: str,
    step: TraceStep | None = None,
    /,
    *,
    spec: GRPOSpec | None = None,
    tolerance: float | None = None,
    strict: bool = False,
    **inputs: Any,
) -> Finding:
    """Run one check and raise :class:`GRPOCheckError` on FAIL (and WARN with ``strict``).

    Returns the worst finding otherwise. Raises :class:`InputError` when the inputs the check needs are
    missing (a usage error in an assertion, not a "not captured" verdict).
    """
    __tracebackhide__ = True
    check = get(check_id)
    if step is not None and not isinstance(step, TraceStep):
        raise InputError(
            f"assert for {check_id}: the positional argument is a TraceStep; pass tensors by name "
            f"(e.g. advantages=...), got {type(step).__name__}"
        )
    if tolerance is not None and not is_nonnegative_number(tolerance):
        raise InputError(f"assert for {check_id}: tolerance must be a number >= 0, got {tolerance!r}")
    _refuse_misspelt_inputs(check_id, inputs)
    spec = None if spec is None else as_spec(spec)
    target = build_step(step, **inputs) if inputs or step is None else step
    findings = check.run(target, spec, tolerance=tolerance)
    worst = max(findings, key=lambda f: severity(f.verdict))
    if worst.verdict is Verdict.NOT_CAPTURED:
        raise InputError(f"assert for {check_id}: {worst.explanation}")
    unevaluated = next((f for f in findings if f.details.get("evaluation_error")), None)
    if unevaluated is not None:  # malformed inputs (mismatched shapes, say): a usage error in an assertion
        raise InputError(f"assert for {check_id}: {unevaluated.explanation}")
    threshold = severity(Verdict.WARN) if strict else severity(Verdict.FAIL)
    if severity(worst.verdict) >= threshold:
        raise GRPOCheckError(worst)
    return worst


# meta keys the checks read (``step.meta``), for telling a misspelt input from a meta key of the user's own
_META_KEYS = (
    "decoded_completion_text",
    "eos_token_ids",
    "kl_estimator",
    "metrics",
    "micro_batch",
    "optimizer_steps_since_old_logps",
    "pad_token_id",
    "rank",
    "ref_is_init",
    "step",
)


def _refuse_misspelt_inputs(check_id: str, inputs: dict[str, Any]) -> None:
    """An input name that is not one the checks know but is one letter or two from one (``group_idx=``,
    ``tolerence=``) would otherwise become a meta key and be ignored: refuse it, naming the likely one."""
    known = (*TENSOR_STAGE, *_TEXT_KEYS, *_META_KEYS, "meta", "spec", "tolerance", "strict")
    for name in inputs:
        if name in known:
            continue
        near = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
        if near:
            raise InputError(f"assert for {check_id}: unknown input {name!r} (did you mean {near[0]!r}?)")


def assert_invariants(
    step_or_trace: Any,
    spec: GRPOSpec | None = None,
    checks: Sequence[str] | None = None,
    *,
    strict: bool = False,
    tolerances: dict[str, float] | None = None,
) -> list[Finding]:
    """Run invariants; raise :class:`GRPOCheckError` for the first failing one (message lists all failures)."""
    __tracebackhide__ = True
    findings = run_invariants(step_or_trace, spec, checks, tolerances=tolerances)
    threshold = severity(Verdict.WARN) if strict else severity(Verdict.FAIL)
    bad = [f for f in findings if severity(f.verdict) >= threshold]
    if bad:
        error = GRPOCheckError(bad[0])
        if len(bad) > 1:
            error.args = (
                "\n".join(f.message() for f in bad[:10])
                + (f"\n... and {len(bad) - 10} more" if len(bad) > 10 else ""),
            )
        raise error
    return findings


def _assert_names() -> dict[str, Check]:
    names: dict[str, Check] = {}
    short_counts: dict[str, int] = {}
    for check in REGISTRY.values():
        short_counts[check.name] = short_counts.get(check.name, 0) + 1
    for check in REGISTRY.values():
        names[f"assert_{check.stage}_{check.name}"] = check
        if short_counts[check.name] == 1:
            names[f"assert_{check.name}"] = check
    return names


ASSERTS: dict[str, Check] = _assert_names()
"""``assert_*`` function name -> check."""

from grpo_check.invariants.asserts import *  # noqa: E402, F403 (one function per check, defined there)

__all__ = [
    "ASSERTS",
    "REGISTRY",
    "Check",
    "assert_invariants",
    "build_step",
    "check_step",
    "get",
    "register",
    "run_invariants",
    "select",
    "where_in_step",
    *sorted(ASSERTS),
]
