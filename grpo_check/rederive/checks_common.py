"""What every re-derivation check shares: the registry (:data:`REDERIVATIONS`, filled in the order
:mod:`grpo_check.rederive.checks` imports the check modules) and the helpers that build their findings."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

from grpo_check._step_cache import _current_memo
from grpo_check.config import GRPOSpec
from grpo_check.findings import Finding, Verdict
from grpo_check.trace.model import Trace, TraceStep

FAMILY = "re-derivations"


"""The check family these findings belong to (``details["family"]``)."""


CheckFunction = Callable[[TraceStep, GRPOSpec, "Trace | None"], "Finding | None"]


@dataclasses.dataclass(frozen=True)
class Rederivation:
    """One registered re-derivation: id ``rederive.<name>``, the stage its quantity lives in, what it needs."""

    id: str
    stage: str
    description: str
    needs: str
    function: CheckFunction = dataclasses.field(repr=False, compare=False)


REDERIVATIONS: dict[str, Rederivation] = {}


def _register(
    name: str, stage: str, description: str, needs: str
) -> Callable[[CheckFunction], CheckFunction]:
    def decorate(function: CheckFunction) -> CheckFunction:
        check_id = f"rederive.{name}"
        REDERIVATIONS[check_id] = Rederivation(check_id, stage, description, needs, function)
        return function

    return decorate


def _where(step: TraceStep, row: int | None = None, token: int | None = None):
    if row is None and token is None:  # the step's own coordinates: the one object the step cache holds
        memo = _current_memo()
        if memo is not None:
            hit = memo.get(("where_base", id(step)))  # where_in_step's entry (absent: it makes it)
            if hit is not None:
                return hit[0]
    return _where_in_step()(step, row, token)


@functools.cache
def _where_in_step() -> Callable[..., Any]:
    """The invariants' ``where_in_step``, imported once, on first use (not with this module)."""
    from grpo_check.invariants.registry import where_in_step

    return where_in_step


def _finding(
    check_id: str,
    step: TraceStep,
    verdict: Verdict,
    explanation: str,
    *,
    figure: float | None = None,
    tolerance: float | None = None,
    row: int | None = None,
    token: int | None = None,
    likely_cause: str | None = None,
    fix: str | None = None,
    catalog_id: str | None = None,
    **details: Any,
) -> Finding:
    stage = REDERIVATIONS[check_id].stage
    failing = verdict in (Verdict.FAIL, Verdict.WARN)
    return Finding(
        check_id=check_id,
        stage=stage,
        verdict=verdict,
        figure=figure,
        tolerance=tolerance,
        where=_where(step, row, token),
        explanation=explanation,
        likely_cause=likely_cause if failing else None,
        fix=fix if failing else None,
        catalog_id=catalog_id if failing else None,
        kind="rederive",
        details={"family": FAMILY, **details},
    )


def _not_captured(check_id: str, step: TraceStep, missing: str) -> Finding:
    needs = REDERIVATIONS[check_id].needs
    return _finding(
        check_id,
        step,
        Verdict.NOT_CAPTURED,
        f"not captured: needs {needs} (missing {missing})",
        missing=[missing],
    )


def _not_applicable(check_id: str, step: TraceStep, reason: str) -> None:
    """Nothing to verify on this step (``reason`` documents why): no finding, so that a step a check does
    not apply to never reads as checked."""
    return None
