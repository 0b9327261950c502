"""grpo-check: verify GRPO training pipelines against a float64 reference, stage by stage.

Public API (lazily imported so ``import grpo_check`` stays cheap)::

    from grpo_check import GRPOSpec, Finding, Result, Verdict
    from grpo_check import reference          # the reference maths (torch)
    from grpo_check import Recorder           # record a trace from a hand-written loop
    from grpo_check import load_trace, compare, check
"""

from __future__ import annotations

import importlib
from typing import Any

from grpo_check.config import GRPOSpec
from grpo_check.findings import Finding, GRPOCheckError, InputError, Result, Verdict, Where

__version__ = "0.1.0"

_LAZY = {
    "reference": ("grpo_check.reference", None),
    "invariants": ("grpo_check.invariants", None),
    "Recorder": ("grpo_check.trace.recorder", "Recorder"),
    "load_trace": ("grpo_check.trace.io", "load_trace"),
    "save_trace": ("grpo_check.trace.io", "save_trace"),
    "Trace": ("grpo_check.trace.model", "Trace"),
    "TraceStep": ("grpo_check.trace.model", "TraceStep"),
    "compare": ("grpo_check.compare", "compare"),
    "check": ("grpo_check.compare", "check"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module_name, attr = _LAZY[name]
        module = importlib.import_module(module_name)
        return module if attr is None else getattr(module, attr)
    raise AttributeError(f"module 'grpo_check' has no attribute {name!r}")


__all__ = [
    "Finding",
    "GRPOCheckError",
    "GRPOSpec",
    "InputError",
    "Result",
    "Verdict",
    "Where",
    "__version__",
    *_LAZY,
]
