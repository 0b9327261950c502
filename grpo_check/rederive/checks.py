"""Re-derivation checks: each recomputes, from the batch, one quantity the loss receives and holds the
trainer's value to it. Check ids are ``rederive.<name>``; each finding lives in the stage of the quantity.

A check whose inputs were not recorded says so (``not_captured`` or ``inconclusive`` with the reason),
never ``pass``. A check that does not apply to this step (no unscorable row, no tool token, a loss type that
does not use N) reports nothing for it: a step is never "checked" by a check that had nothing to verify.
"""

from __future__ import annotations

from grpo_check.config import GRPOSpec
from grpo_check.findings import Finding, Verdict
from grpo_check.rederive.checks_common import FAMILY, REDERIVATIONS, Rederivation, _finding
from grpo_check.rederive.derive import loss_mask, loss_tokens_per_row
from grpo_check.trace.model import Trace, TraceStep

# The checks register on import, in this order (the order of a step's findings): the imports stay unsorted.
# isort: off
from grpo_check.rederive.checks_batch import completion_ends_check
from grpo_check.rederive.checks_loss_count import num_items_check
from grpo_check.rederive.checks_ratio import old_logps_check
from grpo_check.rederive.checks_loss_tools import tool_tokens_check
from grpo_check.rederive.checks_advantages import unscorable_check
# isort: on


def rederive_step(step: TraceStep, spec: GRPOSpec, trace: Trace | None = None) -> list[Finding]:
    """Every re-derivation on one step (``trace``: the trace it belongs to, for the inputs other steps hold)."""
    findings: list[Finding] = []
    scope = step.meta.get("scope")
    for check in REDERIVATIONS.values():
        if scope is not None and (check.stage == "advantages") != (scope == "generation"):
            continue  # whole groups live on generation steps, losses on micro-batch steps
        try:
            finding = check.function(step, spec, trace)
        except (RuntimeError, ValueError, LookupError, TypeError) as error:
            findings.append(
                _finding(
                    check.id,
                    step,
                    Verdict.INCONCLUSIVE,
                    f"could not evaluate ({type(error).__name__}: {error})",
                    evaluation_error=type(error).__name__,
                )
            )
            continue
        if finding is not None:
            findings.append(finding)
    return findings


__all__ = [
    "FAMILY",
    "REDERIVATIONS",
    "Rederivation",
    "completion_ends_check",
    "loss_mask",
    "loss_tokens_per_row",
    "num_items_check",
    "old_logps_check",
    "rederive_step",
    "tool_tokens_check",
    "unscorable_check",
]
