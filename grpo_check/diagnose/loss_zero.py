""" "Loss ≈ 0 is expected here" (bug-catalog #31): on-policy with β = 0, the GRPO loss is ≈ 0 but the gradient
is not. Explained, never failed: compare gradients, not loss values.

On-policy (ρ ≡ 1) the clipped surrogate is −A per token, and group-centred advantages make the aggregated
loss (≈) 0 while ∂loss/∂logp_t = −A_i · w_it ≠ 0.
"""

from __future__ import annotations

import numpy as np
import torch

from grpo_check._step_cache import host_view
from grpo_check.diagnose._context import Diagnosis
from grpo_check.findings import Finding, Verdict


def _moved(logps: torch.Tensor, old: torch.Tensor, mask: torch.Tensor | None) -> bool:
    """Some |logps − old_logps| on the mask above 1e-6 (a NaN difference is not): the step is not on-policy. On
    a small step in numpy (the same IEEE operations; the largest from −inf up, so an empty selection is not)."""
    host, host_old = host_view(logps), host_view(old)
    host_mask = None if mask is None else host_view(mask)
    if (
        host is not None
        and host_old is not None
        and logps.shape == old.shape
        and (mask is None or (host_mask is not None and mask.shape == logps.shape))
    ):
        return bool(_largest_difference(host, host_old, True if host_mask is None else host_mask) > 1e-6)
    diff = (logps - old).abs()
    if mask is not None:
        diff = diff[mask]
    return bool(diff.numel()) and float(diff.max()) > 1e-6


@np.errstate(invalid="ignore", over="ignore")  # inf − inf is NaN, as in torch, silently
def _largest_difference(a: np.ndarray, b: np.ndarray, where: np.ndarray | bool) -> float:
    """max |a − b| over ``where`` (−inf for none; NaN propagates, as torch's max)."""
    return float(np.maximum.reduce(np.abs(a - b), axis=None, where=where, initial=-np.inf))


def detect_loss_near_zero(dx: Diagnosis) -> list[Finding]:
    """Emit an explanation (verdict PASS) when loss ≈ 0 is the expected value and the gradient is non-zero."""
    if dx.spec.beta != 0.0:  # loss ≈ 0 is implied on-policy with β = 0 only
        return []
    loss, adv = dx.trainer("loss"), dx.trainer("advantages")
    logps, old = dx.trainer("logps"), dx.trainer("old_logps")
    if loss is None or adv is None:
        return []
    mask = dx.mask
    if old is not None and logps is not None and _moved(logps, old, mask):
        return []  # not on-policy: loss ≈ 0 is not implied
    scale = float(adv[torch.isfinite(adv)].abs().mean()) if bool(torch.isfinite(adv).any()) else 0.0
    if scale == 0.0 or abs(float(loss)) > 1e-3 * scale:
        return []
    grad = dx.trainer("logps_grad")
    if grad is None:
        grad = dx.ref("logps_grad")
    if grad is None or not bool((grad.abs() > 0).any()):
        return []
    grad_failing = dx.failing(stage="grad")
    if grad_failing:
        return []
    return [
        dx.finding(
            check_id="diagnose.loss_near_zero",
            stage="loss",
            catalog_id="31",
            verdict=Verdict.PASS,
            figure=float(loss),
            tolerance=1e-3 * scale,
            explanation=(
                f"loss is {float(loss):.3g} (≈ 0) while the gradient is not (max |∂loss/∂logps| "
                f"{float(grad.abs().max()):.3g}): this is expected on-policy with β = 0 — ρ ≡ 1, so the per-token loss "
                "is −A and group-centred advantages cancel in the mean, but each token's gradient −A_i·w_it does not"
            ),
            likely_cause="not a bug: 'loss ≈ 0' on-policy with β = 0 is the expected value",
            fix="judge training by the gradient (and rewards), not by the loss value",
        )
    ]
