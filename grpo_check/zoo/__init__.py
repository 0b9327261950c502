"""The bug zoo: realistic buggy GRPO pipelines (mutants), correct controls, and the detection scorecard.

Example::

    >>> from grpo_check.zoo import run_scorecard      # doctest: +SKIP
    >>> card = run_scorecard(only=["S1", "ctl-grpo"])  # doctest: +SKIP
    >>> card.targets_met()                             # doctest: +SKIP
    True

From the command line: ``grpo-check zoo`` (see ``docs/zoo.md``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["GRPOLoop", "LoopConfig", "Scorecard", "all_cases", "run_scorecard", "select_cases"]

_LAZY = {
    "all_cases": ("grpo_check.zoo.cases", "all_cases"),
    "select_cases": ("grpo_check.zoo.cases", "select_cases"),
    "run_scorecard": ("grpo_check.zoo.scorecard", "run_scorecard"),
    "Scorecard": ("grpo_check.zoo.scorecard", "Scorecard"),
    "GRPOLoop": ("grpo_check.zoo.loop", "GRPOLoop"),
    "LoopConfig": ("grpo_check.zoo.loop", "LoopConfig"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module_name, attr = _LAZY[name]
        return getattr(importlib.import_module(module_name), attr)
    raise AttributeError(f"module 'grpo_check.zoo' has no attribute {name!r}")
