"""Known bug signatures, written once: what a bug looks like in numbers is detected in many places (an
invariant, a diagnosis of a failed comparison, an assertion), but its name, its bug-catalog entry, its likely
cause and its fix are stated here, and every place that reports it reads them from here.

Standard library only: any layer may import it.

    >>> from grpo_check.signatures import signature
    >>> sig = signature("repeat_not_interleave")
    >>> sig.catalog_id
    '6'
    >>> "repeat_interleave" in sig.cause
    True
"""

from __future__ import annotations

import dataclasses

__all__ = ["SIGNATURES", "Signature", "signature"]


@dataclasses.dataclass(frozen=True)
class Signature:
    """A known bug: a short name, its bug-catalog entry (``reference/bug-catalog.md``), the likely cause
    reported to the user, and the fix."""

    name: str
    catalog_id: str | None
    cause: str
    fix: str | None = None


SIGNATURES: dict[str, Signature] = {
    s.name: s
    for s in (
        Signature(
            "repeat_not_interleave",
            "6",
            cause=(
                "completions grouped wrongly (repeat instead of repeat_interleave, or per-device order) when computing "
                "group statistics: the baseline of one prompt comes from another prompt's rewards"
            ),
            fix=(
                "lay the rows out prompt by prompt (prompt_ids.repeat_interleave(G)) and reshape rewards with "
                "view(-1, G) in that order, or reduce per group_index; gather across processes before grouping"
            ),
        ),
        Signature(
            "ratio_inverted",
            "21",
            cause="importance ratio inverted: exp(old_logps − logps) instead of exp(logps − old_logps)",
            fix="ρ = exp(logps − old_logps) per token (GSPO: exp of the masked mean per sequence)",
        ),
        Signature(
            "ratio_sequence_sum",
            None,
            cause="sequence ratio from the masked SUM of log-ratios instead of the mean (GSPO uses the mean)",
            fix="ρ_seq = exp(Σ_t mask·(logps − old_logps) / Σ_t mask)",
        ),
        Signature(
            "ratio_padding_averaged",
            "11",
            cause="sequence ratio averaged over all T positions, padding included",
            fix="average the log-ratios over the completion mask only",
        ),
        Signature(
            "kl_detached",
            "18",
            cause="the gradient of the KL is zero: logps detached before the KL term",
            fix="compute the KL from the logps that carry the graph",
        ),
        Signature(
            "kl_gradient_of_another_estimator",
            "18",
            cause="the KL value is right but its gradient is not that of the estimator",
            fix="differentiate the estimator itself (no detached ratio or stop-gradient inside it)",
        ),
        Signature(
            "aggregation_mask_not_applied",
            "11",
            cause="the completion mask is not applied: padding tokens counted in the loss",
            fix="multiply the per-token loss by the completion mask before aggregating",
        ),
        Signature(
            "dr_grpo_batch_length",
            "5",
            cause="dr_grpo normaliser uses this batch's T instead of max_completion_length",
            fix="divide by B · max_completion_length (a constant), not by this batch's padded length",
        ),
        Signature(
            "aggregation_weights_detached",
            "5",
            cause="the loss value is right but the per-token weights are not (detached normaliser?)",
            fix="compute the normaliser without detaching the per-token loss",
        ),
    )
}


def signature(name: str) -> Signature:
    """The signature called ``name`` (a ``KeyError`` naming the known ones otherwise)."""
    try:
        return SIGNATURES[name]
    except KeyError:
        raise KeyError(f"no bug signature {name!r}; known: {', '.join(sorted(SIGNATURES))}") from None
