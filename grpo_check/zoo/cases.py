"""Every zoo case: loads the modules that register mutants and controls into :mod:`grpo_check.zoo.catalog`
and selects among them.

    >>> from grpo_check.zoo.cases import select_cases
    >>> [c.id for c in select_cases(["ctl-grpo"])]
    ['ctl-grpo']
"""

from __future__ import annotations

import grpo_check.zoo.controls
import grpo_check.zoo.mutants_loop
import grpo_check.zoo.mutants_probe
import grpo_check.zoo.mutants_rederive
import grpo_check.zoo.mutants_trl
import grpo_check.zoo.mutants_trl_logps  # noqa: F401  (each registers its cases)
from grpo_check.findings import InputError
from grpo_check.zoo.catalog import Case, registered

__all__ = ["all_cases", "select_cases"]


def all_cases() -> list[Case]:
    """Every registered case: mutants first (in registration order), then controls."""
    cases = registered()
    return [c for c in cases if c.is_mutant] + [c for c in cases if not c.is_mutant]


def select_cases(only: list[str] | None = None) -> list[Case]:
    """Cases whose id, or catalog id (``S1``, ``#6``, ``6``), matches one of ``only``; all when empty.

    Raises :class:`InputError` naming the unknown selector, with the known ids.
    """
    cases = all_cases()
    if not only:
        return cases
    chosen: list[Case] = []
    for selector in only:
        key = selector.strip().lstrip("#")
        exact = [c for c in cases if c.id == selector]
        matches = exact or [
            c
            for c in cases
            if c.id == selector or c.id.startswith(key + "-") or any(b.catalog_id == key for b in c.bugs)
        ]
        if key in ("controls", "control"):
            matches = [c for c in cases if not c.is_mutant]
        if key in ("mutants", "mutant"):
            matches = [c for c in cases if c.is_mutant]
        if not matches:
            import difflib

            close = difflib.get_close_matches(selector, [c.id for c in cases], n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise InputError(
                f"--only {selector!r} matches no zoo case; {hint}use a case id, a bug-catalog id (S1, 6, ...), "
                "'mutants' or 'controls' (grpo-check zoo --list shows every case)"
            )
        chosen.extend(c for c in matches if c not in chosen)
    return chosen
