"""Entropy-mask signature: the high-entropy token mask (``top_entropy_quantile`` < 1) built from the wrong pool.

The reference keeps the tokens whose entropy is at least the (1 − ρ) quantile of the entropies *of the
completion tokens* (M2). A trainer that takes the quantile over every position of the (B, T) entropy tensor,
padding and after-EOS positions included, moves the threshold and keeps another set of tokens. The set the
trainer kept is read off its ∂loss/∂logps: on the tokens whose gradient the reference without an entropy mask
says is non-zero (β = 0, so no KL gradient reaches masked tokens), a token was kept exactly when its
gradient is non-zero.
"""

from __future__ import annotations

import torch

from grpo_check.diagnose._context import Diagnosis
from grpo_check.findings import Finding
from grpo_check.reference.loss import high_entropy_mask


def padded_pool_mask(
    entropies: torch.Tensor, mask: torch.Tensor, top_entropy_quantile: float
) -> torch.Tensor:
    """The wrong mask: the quantile taken over every position of ``entropies`` (padding included)."""
    pool = entropies.double().reshape(-1)
    threshold = torch.quantile(pool, 1.0 - top_entropy_quantile)
    return (entropies.double() >= threshold) & mask.bool()


def detect_entropy_mask_pool(dx: Diagnosis) -> list[Finding]:
    """The trainer's kept tokens equal the mask from a quantile over every position, not the completion's."""
    spec = dx.spec
    if spec.top_entropy_quantile >= 1.0 or spec.beta != 0.0:
        return []
    failing = dx.failing(stage="loss") + dx.failing(stage="grad")
    failing = [f for f in failing if f.kind == "compare" and f.likely_cause is None]
    entropies, grad, mask = dx.trainer("entropies"), dx.trainer("logps_grad"), dx.mask
    if not failing or entropies is None or grad is None or mask is None:
        return []
    unmasked = dx.downstream(spec.replace(top_entropy_quantile=1.0))
    if unmasked is None:
        return []
    informative = (unmasked["logps_grad"].abs() > 0) & mask.bool()  # would carry gradient if kept
    if not bool(informative.any()):
        return []
    kept = grad.abs() > 0
    right = high_entropy_mask(entropies, mask, spec.top_entropy_quantile)
    wrong = padded_pool_mask(entropies, mask, spec.top_entropy_quantile)
    on = informative
    if torch.equal(kept[on], right[on]) or not torch.equal(kept[on], wrong[on]):
        return []
    differ = int((right[on] != wrong[on]).sum())
    return [
        dx.finding(
            check_id="diagnose.entropy_mask_pool",
            stage="loss",
            catalog_id=None,
            figure=float(differ),
            where=dx.where(),
            explanation=(
                f"the trainer's high-entropy mask (top_entropy_quantile={spec.top_entropy_quantile:g}) is the one "
                "whose quantile is taken over every position, padding included: the tokens it trains are exactly "
                f"those, and {differ} token(s) differ from the mask over the completion tokens"
            ),
            likely_cause=(
                "the entropy quantile is computed over the whole (B, T) entropy tensor, padding and after-EOS "
                "positions included, instead of over the completion tokens only"
            ),
            fix="take the quantile over entropies[completion_mask.bool()] (as TRL's get_high_entropy_mask does)",
            details={"tokens_differing": differ},
            attach_to=failing,
        )
    ]
