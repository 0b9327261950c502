"""Check families that plug into the comparison without the compare engine importing them.

A family registers one function ``(step, spec, trace) -> list[Finding]``; :func:`step_findings` runs every
registered family on a step, wherever the comparison runs (``compare``, ``compare_step`` live in ``attach``,
``compare --trainer``). ``trace`` is the trace the step belongs to when there is one (checks that join a step
with its trace's other steps use it), ``None`` live. Families are loaded on first use from
:data:`FAMILY_MODULES`, so importing ``grpo_check.compare`` stays cheap.

Example::

    >>> from grpo_check.compare.hooks import registered_families
    >>> "re-derivations" in registered_families()
    True
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from grpo_check.config import GRPOSpec
    from grpo_check.findings import Finding
    from grpo_check.trace.model import Trace, TraceStep

StepChecks = Callable[["TraceStep", "GRPOSpec", "Trace | None"], "list[Finding]"]

FAMILY_MODULES: tuple[str, ...] = ("grpo_check.rederive",)
"""Modules that register a family when imported."""

_FAMILIES: dict[str, StepChecks] = {}
_CHECK_IDS: dict[str, tuple[str, ...]] = {}
_loaded = False


def register_step_checks(family: str, function: StepChecks, check_ids: tuple[str, ...] = ()) -> None:
    """Run ``function(step, spec, trace)`` on every compared step; its findings belong to ``family``, and
    ``check_ids`` lists the checks it can report (for coverage: which of them ran, which could not)."""
    _FAMILIES[family] = function
    _CHECK_IDS[family] = tuple(check_ids)


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for name in FAMILY_MODULES:
        importlib.import_module(name)


def registered_families() -> list[str]:
    _load()
    return list(_FAMILIES)


def family_check_ids() -> dict[str, tuple[str, ...]]:
    """Every registered family with the check ids it can report.

    >>> family_check_ids()["re-derivations"][0]
    'rederive.completion_ends'
    """
    _load()
    return dict(_CHECK_IDS)


def step_findings(step: TraceStep, spec: GRPOSpec, trace: Trace | None = None) -> list[Finding]:
    """The findings of every registered family on ``step``."""
    if not _loaded:  # (tested here: this runs for every compared step)
        _load()
    findings: list[Finding] = []
    for function in _FAMILIES.values():
        findings.extend(function(step, spec, trace))
    return findings


__all__ = [
    "FAMILY_MODULES",
    "family_check_ids",
    "register_step_checks",
    "registered_families",
    "step_findings",
]
