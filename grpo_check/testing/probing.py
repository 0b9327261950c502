"""Probe your own GRPO loss in CI: the loss callable against the float64 reference on every branch.

``loss_fn(probe) -> (loss, logps_leaf)`` computes your loss from a :class:`grpo_check.probe.ProbeBatch`
(canonical tensors: ``logps``, ``old_logps`` (absent = on-policy), ``advantages``, ``completion_mask``,
``ref_logps`` when β ≠ 0, ``entropies``, ...; normaliser inputs in ``probe.meta``) and returns the scalar it
would backpropagate and the leaf (requiring grad) holding ``probe["logps"]`` it was computed from.

Example::

    >>> from grpo_check.config import GRPOSpec
    >>> from grpo_check.probe import reference_loss_fn
    >>> from grpo_check.testing import probe_loss
    >>> spec = GRPOSpec(num_generations=4, loss_type="grpo", epsilon_high=0.28)
    >>> probe_loss(reference_loss_fn(spec), spec).summary()
    'probes: 4 run, 0 failed, 12 branches exercised'
"""

from __future__ import annotations

from typing import Any

from grpo_check.findings import Finding, Verdict
from grpo_check.probe.runner import LossFn, ProbeOutcome, run_probes

__all__ = ["probe_loss", "probe_loss_findings"]


def probe_loss_findings(
    loss_fn: LossFn, spec: Any, batch: Any = None, *, tolerances: Any = None, tool_mask: bool = False
) -> list[Finding]:
    """Findings of probing ``loss_fn`` (``probe.loss``, ``probe.logps_grad``); ``batch``: a captured
    micro-batch (``TraceStep`` or mapping of canonical tensors) to build the probes from, or None."""
    return run_probes(loss_fn, spec, batch, tolerances=tolerances, tool_mask=tool_mask).findings


def probe_loss(
    loss_fn: LossFn, spec: Any, batch: Any = None, *, tolerances: Any = None, tool_mask: bool = False
) -> ProbeOutcome:
    """Probe ``loss_fn``; raise ``AssertionError`` (torch.testing style: what differed, where, by how much,
    allowed how much, the branch and the likely cause) unless every probe ran and agreed with the reference.
    Returns the :class:`~grpo_check.probe.runner.ProbeOutcome` (probes run, branches exercised)."""
    outcome = run_probes(loss_fn, spec, batch, tolerances=tolerances, tool_mask=tool_mask)
    bad = [f for f in outcome.findings if f.verdict is not Verdict.PASS]
    if bad:
        error = AssertionError(
            f"the loss differs from the reference on probing ({outcome.summary()}):\n\n"
            + "\n\n".join(f.message() for f in bad)
        )
        error.findings = bad  # type: ignore[attr-defined]
        raise error
    return outcome
