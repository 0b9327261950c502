"""Invariant assertions, hypothesis strategies and probe tasks for users' own test suites.

Everything a CI test needs to hold a GRPO implementation to the float64 reference::

    from grpo_check.testing import (
        assert_advantages_close, assert_logps_close, assert_ratio_close, assert_kl_close,
        assert_loss_close, assert_grad_close,        # your tensors vs the reference, assert_close style
        assert_matches_reference,                    # property-test your function (hypothesis, shrinking)
        probes,                                      # tiny problems with closed-form answers
        strategies,                                  # hypothesis strategies for GRPO batches
    )

plus the invariants' ``assert_*`` forms (``assert_group_sum_zero``, ...; see :mod:`grpo_check.invariants`),
re-exported here lazily. The pytest plugin (fixtures ``grpo_spec``, ``grpo_batch``, ``grpo_probe_*``,
marker ``grpo``, option ``--grpo-report``) is :mod:`grpo_check.testing.plugin`, loaded automatically.

Names are imported lazily on first use: importing the package (or the plugin) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY: dict[str, str] = {
    "assert_advantages_close": "assertions",
    "assert_grad_close": "assertions",
    "assert_kl_close": "assertions",
    "assert_logps_close": "assertions",
    "assert_loss_close": "assertions",
    "assert_ratio_close": "assertions",
    "STAGE_NAMES": "matching",
    "assert_matches_reference": "matching",
    "Probe": "probes",
    "advantage_pair_probe": "probes",
    "advantage_probe": "probes",
    "aggregation_probe": "probes",
    "all_probes": "probes",
    "clip_probe": "probes",
    "kl_probe": "probes",
    "on_policy_probe": "probes",
    "probe_loss": "probing",
    "probe_loss_findings": "probing",
    "GRPOBatch": "strategies",
    "grpo_batches": "strategies",
    "make_batch": "strategies",
    "specs": "strategies",
}
"""Public name -> submodule. Everything is imported on first use, so that the pytest plugin
(``grpo_check.testing.plugin``, imported by every pytest run) does not pull in torch or hypothesis."""

_SUBMODULES = ("probes", "strategies", "matching", "assertions", "plugin")


def _invariant_asserts() -> dict[str, Any]:
    try:
        invariants = importlib.import_module("grpo_check.invariants")
    except ImportError:  # pragma: no cover - the invariants package ships with grpo-check
        return {}
    names = getattr(invariants, "ASSERTS", None) or {}
    out = {name: getattr(invariants, name) for name in names if hasattr(invariants, name)}
    if hasattr(invariants, "assert_invariants"):
        out["assert_invariants"] = invariants.assert_invariants
    return out


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f"grpo_check.testing.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"grpo_check.testing.{name}")
    if name.startswith("assert_"):
        asserts = _invariant_asserts()
        if name in asserts:
            return asserts[name]
    raise AttributeError(f"module 'grpo_check.testing' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, *_SUBMODULES, *_invariant_asserts()})


__all__ = [
    "STAGE_NAMES",
    "GRPOBatch",
    "Probe",
    "advantage_pair_probe",
    "advantage_probe",
    "aggregation_probe",
    "all_probes",
    "assert_advantages_close",
    "assert_grad_close",
    "assert_kl_close",
    "assert_logps_close",
    "assert_loss_close",
    "assert_matches_reference",
    "assert_ratio_close",
    "clip_probe",
    "grpo_batches",
    "kl_probe",
    "make_batch",
    "on_policy_probe",
    "specs",
]
