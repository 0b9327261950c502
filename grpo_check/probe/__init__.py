"""Active probing of a trainer's own loss code, independent of any trainer library.

Real batches seldom reach the rare branches of a GRPO loss: two training steps rarely push a ratio below
1 − ε_low, past ``delta`` or into the caps of cispo/vespo, and on-policy batches never clip at all. Probing
builds synthetic micro-batches that drive every branch the configured loss has (from a captured micro-batch,
or from scratch), runs the trainer's *own* loss code on them through a loss callable, and compares the loss
and ∂loss/∂logps with the float64 reference, element by element.

* :mod:`.batches` builds the probe micro-batches (:class:`ProbeBatch`) for a :class:`~grpo_check.GRPOSpec`;
* :mod:`.branches` says which branch of the loss each element of a probe exercises;
* :mod:`.runner` runs a loss callable ``(probe) -> (loss, logps_leaf)`` on every probe and returns findings
  (stages ``loss`` and ``grad``, check ids ``probe.loss`` and ``probe.logps_grad``);
* :mod:`.diagnose` names a known bug when the trainer's numbers match a known wrong variant of the loss.

A trainer adapter only supplies the loss callable (for TRL: :func:`grpo_check.trl.probe.probe_trainer`).

Example::

    >>> import torch
    >>> from grpo_check.config import GRPOSpec
    >>> from grpo_check.probe import reference_loss_fn, run_probes
    >>> spec = GRPOSpec(num_generations=4, loss_type="dapo", epsilon_high=0.28, delta=1.6)
    >>> outcome = run_probes(reference_loss_fn(spec), spec)
    >>> outcome.ok, len(outcome.branches) >= 10
    (True, True)
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BRANCHES",
    "ProbeBatch",
    "ProbeOutcome",
    "build_probes",
    "reference_loss_fn",
    "run_probes",
]

_LAZY = {
    "BRANCHES": "grpo_check.probe.branches",
    "ProbeBatch": "grpo_check.probe.batches",
    "build_probes": "grpo_check.probe.batches",
    "ProbeOutcome": "grpo_check.probe.runner",
    "run_probes": "grpo_check.probe.runner",
    "reference_loss_fn": "grpo_check.probe.runner",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'grpo_check.probe' has no attribute {name!r}")
