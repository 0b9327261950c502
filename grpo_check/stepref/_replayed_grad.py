"""∂loss/∂logps of the reference loss on a small step, by replaying autograd's backward operations in numpy.

:func:`grpo_check.stepref.inputs.reference_downstream` differentiates the reference loss with float64 autograd.
On a demo-sized step the engine's run (node creation in the forward, the graph walk in the backward) costs
more than the arithmetic. For the common objectives this module computes the same gradient from the forward's
values with the operations torch's backward formulas perform, in the order its engine accumulates them: the
same IEEE double operations, so the same bits. Covered: the clipped surrogate (O1) of grpo, bnpo, dr_grpo,
dapo and luspo at token level without δ, dual clip, off-policy mask, entropy mask, importance weights or
entropy bonus; β = 0 or the k3 estimator (K3), with or without the ratio factor (K4); every aggregation
(N1)–(N5). Anything else, or a tensor numpy cannot view, takes autograd.

The first replay of each kind of objective in a process is checked bit for bit against autograd on its own
step; a torch whose backward formulas or accumulation order differ then keeps autograd for that kind.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from grpo_check._step_cache import host_view
from grpo_check.config import GRPOSpec
from grpo_check.reference.loss import CLIPPED_SURROGATE_TYPES

__all__ = ["replay_key", "replayed_grad", "trusted"]

# kind of objective -> whether its replay matched autograd bit for bit (absent: not yet compared)
_TRUSTED: dict[tuple[str, bool, bool], bool] = {}


def replay_key(spec: GRPOSpec) -> tuple[str, bool, bool] | None:
    """(aggregation, KL term, ratio factor on the KL) when the gradient of ``spec``'s loss can be replayed,
    else ``None``."""
    if (
        spec.loss_type not in CLIPPED_SURROGATE_TYPES
        or spec.importance_sampling_level != "token"
        or spec.delta is not None
        or spec.dual_clip is not None
        or spec.off_policy_mask_threshold is not None
        or spec.top_entropy_quantile < 1.0
        or spec.sampler_is_correction
        or spec.entropy_coef != 0.0
    ):
        return None
    with_kl = spec.beta != 0.0
    if with_kl and spec.kl_estimator != "k3":
        return None
    return spec.aggregation_effective, with_kl, with_kl and spec.use_bias_correction_kl


def trusted(key: tuple[str, bool, bool], check: Callable[[], bool]) -> bool:
    """Whether replays of ``key`` may stand for autograd: ``check()`` (replay == autograd on one step) the
    first time, remembered for the process."""
    verdict = _TRUSTED.get(key)
    if verdict is None:
        verdict = _TRUSTED[key] = bool(check())
    return verdict


@np.errstate(all="ignore")  # 0·inf, inf − inf: NaN without a warning, as in torch
def replayed_grad(
    spec: GRPOSpec,
    key: tuple[str, bool, bool],
    accumulation: int,
    *,
    logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    ratio: torch.Tensor,
    clipped_ratio: torch.Tensor,
    normalizer: torch.Tensor,
    ref_logps: torch.Tensor | None,
) -> torch.Tensor | None:
    """∂loss/∂logps (float64, like ``logps``) from the forward's float64 values, or ``None`` where a tensor
    has no numpy view or the mask is not {0, 1} (the row counts of (N1) would then depend on summation
    order)."""
    aggregation, with_kl, ratio_factor = key
    views = [host_view(t) for t in (logps, advantages, mask, ratio, clipped_ratio, normalizer)]
    if any(view is None for view in views):
        return None
    logp, adv, m, rho, clipped, norm = views
    if adv.ndim == 1:
        adv = adv[:, None]
    upstream = _aggregation_grad(aggregation, m, norm, accumulation)
    if upstream is None:
        return None
    # (O1) policy = −min(ρ·A, clip(ρ)·A); NegBackward, then MinimumBackward (ties split in half)
    g_policy = -upstream
    surrogate, clipped_surrogate = rho * adv, clipped * adv
    split = np.where(surrogate == clipped_surrogate, g_policy / 2, g_policy)
    g_surrogate = np.where(surrogate > clipped_surrogate, 0.0, split)
    g_clipped_surrogate = np.where(surrogate < clipped_surrogate, 0.0, split)
    # MulBackward (× A), ClampBackward (P3): the gradient passes where 1 − ε_low ≤ ρ ≤ 1 + ε_high
    low, high = 1.0 - spec.epsilon_low, 1.0 + spec.epsilon_high_effective
    from_surrogate = g_surrogate * adv
    from_clip = np.where((rho >= low) & (rho <= high), g_clipped_surrogate * adv, 0.0)
    if not with_kl:
        return torch.from_numpy((from_surrogate + from_clip) * rho)  # ExpBackward of ρ = exp(log ρ) (P1)
    ref = host_view(ref_logps) if ref_logps is not None else None
    if ref is None:
        return None
    # (K3) k3 = expm1(x) − x, x = ref − logp; (K4) kl = k3·ρ; loss = policy + β·kl (O6)
    g_kl = upstream * spec.beta
    x = ref - logp
    expm1_x = torch.expm1(torch.from_numpy(x)).numpy()  # torch's expm1: the forward's own bits
    if ratio_factor:
        g_k3 = g_kl * rho
        g_ratio = (g_kl * (expm1_x - x) + from_surrogate) + from_clip  # the engine's arrival order
    else:
        g_k3 = g_kl
        g_ratio = from_surrogate + from_clip
    g_x = g_k3 * (expm1_x + 1.0) + -g_k3  # Expm1Backward and SubBackward into x
    return torch.from_numpy(g_ratio * rho + -g_x)  # log ρ = logp − old (P1) and x = ref − logp


def _aggregation_grad(aggregation: str, mask: Any, normalizer: Any, accumulation: int) -> Any:
    """∂loss/∂ℓ (B, T) for the aggregation (N1)–(N5) of ``mask``-weighted per-token losses, as its backward
    computes it from a seed of 1."""
    rows = mask.shape[0]
    if rows == 0 or accumulation == 0:  # Python's 1 / 0 raises where torch's gives inf: autograd's to say
        return None
    if aggregation in ("token_mean", "seq_mean_token_sum_norm"):  # Σ m ℓ / normaliser (N2)–(N4)
        return (1.0 / normalizer) * mask
    if aggregation == "seq_mean_token_sum":  # mean_i Σ_t m ℓ / K (N5)
        return (1.0 / accumulation / rows) * mask
    if aggregation == "seq_mean_token_mean":  # mean_i (Σ_t m ℓ / max(|o_i|, 1)) / K (N1)
        if not ((mask == 0.0) | (mask == 1.0)).all():
            return None
        lengths = np.maximum(mask.sum(-1), 1.0)
        return ((1.0 / accumulation / rows) / lengths)[:, None] * mask
    return None
