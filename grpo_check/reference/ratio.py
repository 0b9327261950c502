"""Stage `ratio`: importance ratios, clipping, clip masks, sampler correction, off-policy mask (spec §4, P1–P9).

Example::

    >>> import torch
    >>> from grpo_check.reference import importance_log_ratio
    >>> logps, old = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -2.0]])
    >>> importance_log_ratio(logps, old, torch.ones(1, 2), "token")
    tensor([[0.5000, 0.0000]], dtype=torch.float64)
    >>> importance_log_ratio(logps, old, torch.ones(1, 2), "sequence")    # GSPO: masked mean
    tensor([[0.2500]], dtype=torch.float64)
"""

from __future__ import annotations

import math

import torch

from grpo_check._step_cache import host_view
from grpo_check.findings import InputError
from grpo_check.reference._util import DTYPE, as_f64, as_mask, masked_row_mean


def importance_log_ratio(
    logps: torch.Tensor, old_logps: torch.Tensor, completion_mask: torch.Tensor | None, level: str = "token"
) -> torch.Tensor:
    """log ρ: token level (B, T) = logp − old_logp (P1); sequence level (B, 1) = masked mean of that (P2)."""
    log_ratio = as_f64(logps) - as_f64(old_logps)  # (P1)
    if level == "token":
        return log_ratio
    if level == "sequence":
        return masked_row_mean(log_ratio, as_mask(completion_mask, log_ratio))  # (P2)
    raise InputError(f"level must be 'token' or 'sequence', got {level!r}", field="importance_sampling_level")


def importance_ratio(
    logps: torch.Tensor, old_logps: torch.Tensor, completion_mask: torch.Tensor | None, level: str = "token"
) -> torch.Tensor:
    """ρ = exp(log ρ).  # (P1) (P2)"""
    return importance_log_ratio(logps, old_logps, completion_mask, level).exp()


def clip_ratio(ratio: torch.Tensor, epsilon_low: float, epsilon_high: float) -> torch.Tensor:
    """clip(ρ, 1 − ε_low, 1 + ε_high).  # (P3)"""
    return torch.clamp(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high)  # (P3)


def clip_masks(
    ratio: torch.Tensor, advantages: torch.Tensor, epsilon_low: float, epsilon_high: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """TRL's clip metrics: low = ρ < 1−ε_low ∧ A < 0; high = ρ > 1+ε_high ∧ A > 0 (where the clip binds).  # (P4)"""
    advantages = _adv_2d(advantages)
    if ratio.dtype is DTYPE:
        host_ratio, host_adv = host_view(ratio), host_view(advantages)
        if host_ratio is not None and host_adv is not None:  # a small step: the same comparisons in numpy
            return (
                torch.from_numpy((host_ratio < 1.0 - epsilon_low) & (host_adv < 0.0)),  # (P4)
                torch.from_numpy((host_ratio > 1.0 + epsilon_high) & (host_adv > 0.0)),  # (P4)
            )
    is_low = (ratio < 1.0 - epsilon_low) & (advantages < 0.0)  # (P4)
    is_high = (ratio > 1.0 + epsilon_high) & (advantages > 0.0)  # (P4)
    return is_low, is_high


def sampler_is_ratio(
    old_logps: torch.Tensor,
    sampler_logps: torch.Tensor,
    loss_mask: torch.Tensor | None,
    mode: str = "sequence_mask",
    clip_min: float | None = None,
    clip_max: float | None = 3.0,
) -> torch.Tensor:
    """Sampler (e.g. vLLM) importance-sampling correction w = π_old / π_sampler, as TRL computes it.  # (P7)

    d_t = (old_logp − sampler_logp)·m_t (NaN → 0). Token modes: w_t = exp(d_t), (B, T); sequence modes:
    w = exp(Σ_t d_t), (B, 1). ``*_truncate`` clamps w to [clip_min, clip_max]; ``*_mask`` sets w = 0 outside.
    """
    diff = (as_f64(old_logps) - as_f64(sampler_logps)) * as_mask(loss_mask, as_f64(old_logps))
    diff = torch.nan_to_num(diff, nan=0.0)
    if mode in ("sequence_mask", "sequence_truncate"):
        diff = diff.sum(dim=-1, keepdim=True)
    elif mode not in ("token_mask", "token_truncate"):
        raise InputError(f"unknown sampler_is_mode {mode!r}", field="sampler_is_mode")
    weight = diff.exp()  # (P7)
    if mode.endswith("truncate"):
        return torch.clamp(weight, min=clip_min, max=clip_max)
    low = -math.inf if clip_min is None else clip_min
    high = math.inf if clip_max is None else clip_max
    return weight.masked_fill((weight < low) | (weight > high), 0.0)


def off_policy_sequence_mask(
    advantages: torch.Tensor,
    logps: torch.Tensor,
    sampler_logps: torch.Tensor,
    loss_mask: torch.Tensor | None,
    threshold: float,
) -> torch.Tensor:
    """DeepSeek-V3.2 off-policy sequence mask (B, 1): keep if A ≥ 0 or mean_t(sampler_logp − logp) ≤ δ.  # (P8)

    NaN sampler log-probs count as zero divergence (TRL semantics).
    """
    divergence = torch.nan_to_num(as_f64(sampler_logps) - as_f64(logps).detach(), nan=0.0)
    mean_divergence = masked_row_mean(divergence, as_mask(loss_mask, divergence))
    keep = (_adv_2d(advantages) >= 0) | (mean_divergence <= threshold)  # (P8)
    return keep.to(DTYPE)


def _adv_2d(advantages: torch.Tensor) -> torch.Tensor:
    advantages = as_f64(advantages)
    return advantages.unsqueeze(1) if advantages.dim() == 1 else advantages
