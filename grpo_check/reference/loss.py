"""Stage `loss`: per-token objectives of every TRL 1.16 loss type, masks, and aggregation (spec §6–7).

Sign convention: ``per_token_loss`` is the quantity *minimised* (−objective), exactly as TRL's.

Example::

    >>> import torch
    >>> from grpo_check.config import GRPOSpec
    >>> from grpo_check.reference import per_token_loss, aggregate_loss
    >>> spec = GRPOSpec(num_generations=2, loss_type="grpo")
    >>> logps = torch.tensor([[-1.0, -1.0], [-2.0, -2.0]])
    >>> out = per_token_loss(logps, logps, torch.tensor([1.0, -1.0]), torch.ones(2, 2), spec)
    >>> out.per_token_loss                  # on-policy: ρ = 1, loss = −A
    tensor([[-1., -1.],
            [ 1.,  1.]], dtype=torch.float64)
    >>> aggregate_loss(out.per_token_loss, torch.ones(2, 2), spec).loss
    tensor(0., dtype=torch.float64)
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import torch

from grpo_check._step_cache import host_view
from grpo_check.config import GRPOSpec
from grpo_check.findings import InputError
from grpo_check.reference._util import DTYPE, as_f64, as_mask
from grpo_check.reference.kl import per_token_kl
from grpo_check.reference.ratio import (
    clip_masks,
    clip_ratio,
    importance_log_ratio,
    off_policy_sequence_mask,
)
from grpo_check.reference.ratio import (
    sampler_is_ratio as compute_sampler_is_ratio,
)

CLIPPED_SURROGATE_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo")


# ----------------------------------------------------------------------------------------------- masks


def loss_mask(
    completion_mask: torch.Tensor,
    tool_mask: torch.Tensor | None = None,
    truncated: torch.Tensor | None = None,
    mask_truncated_completions: bool = False,
) -> torch.Tensor:
    """m = completion_mask · tool_mask · (1 − truncated if masking truncated completions).  # (M1)"""
    mask = as_f64(completion_mask)
    if tool_mask is not None:
        mask = mask * as_f64(tool_mask)
    if mask_truncated_completions and truncated is not None:
        mask = mask * (~truncated.to(torch.bool)).to(DTYPE).unsqueeze(1)
    return mask  # (M1)


def high_entropy_mask(
    entropies: torch.Tensor, mask: torch.Tensor, top_entropy_quantile: float
) -> torch.Tensor:
    """Keep the top-ρ fraction of tokens by entropy: H_t ≥ quantile_{1−ρ}(H over masked tokens).  # (M2)

    TRL ``get_high_entropy_mask`` semantics (linear-interpolation quantile over the masked tokens of the
    whole batch; padding never kept; an empty batch keeps nothing).
    """
    entropies = as_f64(entropies)
    valid = as_f64(mask).bool()
    pool = entropies[valid]
    if pool.numel() == 0:
        return torch.zeros_like(valid)
    threshold = torch.quantile(pool, 1.0 - top_entropy_quantile)  # (M2)
    return ((entropies * valid.to(DTYPE)) >= threshold) & valid


# ------------------------------------------------------------------------------------- policy objectives


def clipped_surrogate_loss(
    ratio: torch.Tensor,
    advantages: torch.Tensor,
    epsilon_low: float,
    epsilon_high: float,
    delta: float | None = None,
    dual_clip: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO/GRPO clipped surrogate, −min(ρ̃A, clip(ρ)A) with ρ̃ = min(ρ, δ); dual clip caps it at c·|A| for A < 0.  # (O1) (O2)

    Returns ``(per_token_loss, clipped_ratio)``.
    """
    return _clipped_surrogate(ratio, _adv_2d(advantages), epsilon_low, epsilon_high, delta, dual_clip)


def _clipped_surrogate(
    ratio: torch.Tensor,
    advantages: torch.Tensor,
    epsilon_low: float,
    epsilon_high: float,
    delta: float | None,
    dual_clip: float | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`clipped_surrogate_loss` of float64 advantages already (B, 1) or (B, T).  # (O1) (O2)"""
    clipped = clip_ratio(ratio, epsilon_low, epsilon_high)  # (P3)
    capped = torch.clamp(ratio, max=delta) if delta is not None else ratio  # (P5)
    loss = -torch.min(capped * advantages, clipped * advantages)  # (O1)
    if dual_clip is not None:
        loss = torch.where(advantages < 0, torch.min(loss, -dual_clip * advantages), loss)  # (O2)
    return loss, clipped


def cispo_loss(
    ratio: torch.Tensor, advantages: torch.Tensor, logps: torch.Tensor, epsilon_max: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """CISPO: −sg(min(ρ, ε_max))·A·logp (REINFORCE with a clipped, detached IS weight).  # (O3)"""
    weight = torch.clamp(ratio, max=epsilon_max).detach()
    return -weight * _adv_2d(advantages) * as_f64(logps), weight  # (O3)


def sapo_loss(
    ratio: torch.Tensor, advantages: torch.Tensor, temperature_pos: float, temperature_neg: float
) -> torch.Tensor:
    """SAPO soft gate: −(4/τ)·σ(τ(ρ − 1))·A, τ = τ_pos if A > 0 else τ_neg.  # (O4)"""
    advantages = _adv_2d(advantages)
    tau = torch.where(
        advantages > 0, torch.full_like(advantages, temperature_pos), temperature_neg
    )  # float64
    return -(torch.sigmoid(tau * (ratio - 1.0)) * 4.0 / tau) * advantages  # (O4)


@torch.no_grad()
def vespo_gamma_weights(
    advantages: torch.Tensor,
    log_ratio: torch.Tensor,
    mask: torch.Tensor,
    sampler_is_ratio: torch.Tensor | None = None,
    k_pos: float = 2.0,
    lambda_pos: float = 3.0,
    k_neg: float = 3.0,
    lambda_neg: float = 2.0,
) -> torch.Tensor:
    """VESPO gamma weight φ(w) = exp(λ + k·log w − λ·w) (φ(1) = 1), detached, (B, 1).  # (O5)

    log w = clamp(Σ_t m_t·clamp(log ρ_t, ±20) + Σ_t clamp(log w^IS_t, log 1e-8, 20), log 1e-8, 20);
    (k, λ) = (k_pos, λ_pos) if A ≥ 0 else (k_neg, λ_neg); non-finite φ → 0. TRL ``get_gamma_weights``.
    """
    lower = math.log(1e-8)
    seq_log_ratio = (torch.clamp(as_f64(log_ratio), -20.0, 20.0) * as_f64(mask)).sum(-1, keepdim=True)
    if sampler_is_ratio is not None:
        seq_log_ratio = seq_log_ratio + torch.clamp(torch.log(as_f64(sampler_is_ratio)), lower, 20.0).sum(
            -1, keepdim=True
        )
    log_w = torch.clamp(seq_log_ratio, lower, 20.0)
    advantages = _adv_2d(advantages)
    nonneg = advantages >= 0
    k = torch.where(nonneg, torch.full_like(advantages, k_pos), k_neg)  # float64 (TRL: float32 scalars)
    lam = torch.where(nonneg, torch.full_like(advantages, lambda_pos), lambda_neg).clamp(min=1e-4)
    log_phi = lam + k * log_w - lam * log_w.exp()  # (O5)
    return log_phi.exp().nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)


def vespo_loss(phi: torch.Tensor, advantages: torch.Tensor, logps: torch.Tensor) -> torch.Tensor:
    """VESPO: −φ·A·logp with φ detached.  # (O5)"""
    return -phi.detach() * _adv_2d(advantages) * as_f64(logps)  # (O5)


@dataclasses.dataclass
class PerTokenLoss:
    """Output of :func:`per_token_loss`. All (B, T) unless noted; ratio-shaped fields are (B, T) or (B, 1)."""

    per_token_loss: torch.Tensor  # total minimised per-token quantity (policy·masks·IS + β·KL), (B, T)
    policy_loss: torch.Tensor  # policy part before masks / IS / KL (broadcast to (B, T))
    log_ratio: torch.Tensor
    ratio: torch.Tensor  # ρ before any clipping (coef_1)
    clipped_ratio: torch.Tensor | None  # clip(ρ) (clipped surrogate), min(ρ, ε_max) (cispo); None otherwise
    is_low_clipped: torch.Tensor | None
    is_high_clipped: torch.Tensor | None
    kl: torch.Tensor | None  # per-token KL as added to the loss (ρ·k when bias-corrected)
    entropy_mask: torch.Tensor | None
    off_policy_mask: torch.Tensor | None  # (B, 1)
    sampler_is_ratio: torch.Tensor | None
    vespo_phi: torch.Tensor | None  # (B, 1)
    # ``ratio`` detached, where the loss made that view (the clipped surrogates): the values outside the graph
    ratio_values: torch.Tensor | None = None


def per_token_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor | None,
    advantages: torch.Tensor,
    loss_mask: torch.Tensor | None,
    spec: GRPOSpec,
    *,
    ref_logps: torch.Tensor | None = None,
    entropies: torch.Tensor | None = None,
    sampler_logps: torch.Tensor | None = None,
    sampler_is_ratio: torch.Tensor | None = None,
) -> PerTokenLoss:
    """The per-token minimised quantity ℓ_{i,t} for ``spec.loss_type``, TRL 1.16 ``_compute_loss`` order.  # (O6)

    ℓ = policy_term · M_offpolicy · M_entropy · w_IS + β·kl, where
    policy_term is (O1)/(O2) for grpo, bnpo, dr_grpo, dapo, luspo; (O3) cispo; (O4) sapo; (O5) vespo.
    ``old_logps=None`` means on-policy (old = logps.detach()). ``advantages`` is (B,) or (B, T).
    ``loss_mask`` is the tool/truncation-adjusted mask (M1). ``sampler_is_ratio`` (if given) is used as is;
    otherwise, with ``spec.sampler_is_correction``, it is computed from ``old_logps`` and ``sampler_logps``
    (P7). ``entropies`` are needed when ``spec.top_entropy_quantile < 1``; ``ref_logps`` when ``spec.beta != 0``.
    Gradients flow to ``logps`` only.
    """
    logps = as_f64(logps)
    old = logps.detach() if old_logps is None else as_f64(old_logps)
    mask = as_mask(loss_mask, logps)
    advantages = as_f64(advantages)
    adv = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages
    log_ratio = importance_log_ratio(logps, old, mask, spec.importance_sampling_level)  # (P1) (P2)
    ratio = log_ratio.exp()

    off_mask = None
    if spec.off_policy_mask_threshold is not None:
        reference = sampler_logps if sampler_logps is not None else old
        off_mask = off_policy_sequence_mask(
            adv, logps, reference, mask, spec.off_policy_mask_threshold
        )  # (P8)

    if sampler_is_ratio is None and spec.sampler_is_correction:
        if sampler_logps is None:
            raise InputError(
                "sampler_is_correction needs sampler_logps (or a given sampler_is_ratio)",
                field="sampler_logps",
            )
        sampler_is_ratio = compute_sampler_is_ratio(
            old, sampler_logps, mask, spec.sampler_is_mode, spec.sampler_is_clip_min, spec.sampler_is_clip_max
        )  # (P7)
    is_weight = None if sampler_is_ratio is None else as_f64(sampler_is_ratio)

    clipped = is_low = is_high = phi = ratio_values = None
    loss_type = spec.loss_type
    if loss_type in CLIPPED_SURROGATE_TYPES:
        epsilon_low, epsilon_high, delta = spec.epsilon_low, spec.epsilon_high_effective, spec.delta
        policy, clipped = _clipped_surrogate(ratio, adv, epsilon_low, epsilon_high, delta, spec.dual_clip)
        if delta is None:
            capped = ratio_values = ratio.detach()
        else:
            capped = torch.clamp(ratio, max=delta).detach()
        is_low, is_high = _clip_masks(capped, advantages, adv, epsilon_low, epsilon_high)  # (P4)
    elif loss_type == "cispo":
        policy, clipped = cispo_loss(ratio, adv, logps, spec.epsilon_high_effective)
        is_high = (ratio.detach() > spec.epsilon_high_effective) & (adv > 0)  # (P6) TRL cispo_clip_ratio
        is_low = torch.zeros_like(is_high)
    elif loss_type == "sapo":
        policy = sapo_loss(ratio, adv, spec.sapo_temperature_pos, spec.sapo_temperature_neg)
    elif loss_type == "vespo":
        log_ratio_token = log_ratio if spec.importance_sampling_level == "token" else logps - old  # (P1)
        phi = vespo_gamma_weights(
            adv, log_ratio_token, mask, is_weight,
            spec.vespo_k_pos, spec.vespo_lambda_pos, spec.vespo_k_neg, spec.vespo_lambda_neg,
        )  # fmt: skip
        policy = vespo_loss(phi, adv, logps)
    else:  # pragma: no cover - GRPOSpec validates loss_type
        raise InputError(f"unknown loss_type {spec.loss_type!r}", field="loss_type")

    loss = policy
    if off_mask is not None:
        loss = loss * off_mask
    ent_mask = None
    if spec.top_entropy_quantile < 1.0:
        if entropies is None:
            raise InputError("top_entropy_quantile < 1 needs entropies", field="entropies")
        ent_mask = high_entropy_mask(entropies, mask, spec.top_entropy_quantile)  # (M2)
        loss = loss * ent_mask.to(DTYPE)
    if is_weight is not None and loss_type != "vespo":
        loss = loss * is_weight  # (P7)
    kl = None
    if spec.beta != 0.0:
        if ref_logps is None:
            raise InputError("beta != 0 needs ref_logps", field="ref_logps")
        kl = per_token_kl(logps, ref_logps, spec.kl_estimator, ratio if spec.use_bias_correction_kl else None)
        loss = loss + spec.beta * kl  # (O6)
    # each broadcast to its shape: the tensor itself when it already has it (no view, no graph node)
    shape = logps.shape
    if is_low is not None:
        low_shape = (ratio.shape[0], is_low.shape[1])
        is_low = is_low if is_low.shape == low_shape else is_low.expand(low_shape)
    if is_high is not None:
        high_shape = (ratio.shape[0], is_high.shape[1])
        is_high = is_high if is_high.shape == high_shape else is_high.expand(high_shape)
    return PerTokenLoss(
        per_token_loss=loss if loss.shape == shape else loss.expand(shape),
        policy_loss=policy if policy.shape == shape else policy.expand(shape),
        log_ratio=log_ratio,
        ratio=ratio,
        clipped_ratio=clipped,
        is_low_clipped=is_low,
        is_high_clipped=is_high,
        kl=kl,
        entropy_mask=ent_mask,
        off_policy_mask=off_mask,
        sampler_is_ratio=is_weight,
        vespo_phi=phi,
        ratio_values=ratio_values,
    )


def _clip_masks(
    ratio: torch.Tensor,
    advantages: torch.Tensor,
    advantages_2d: torch.Tensor,
    epsilon_low: float,
    epsilon_high: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`~grpo_check.reference.ratio.clip_masks` of the detached ``ratio`` and the float64 ``advantages``
    as given (``advantages_2d``: them made 2-D). On a small step both are read through the step's shared numpy
    views (the given advantages', made 2-D in numpy: no view of a fresh unsqueezed tensor); the same
    comparisons."""
    if ratio.dtype is DTYPE:
        host_ratio, host_adv = host_view(ratio), host_view(advantages)
        if host_ratio is not None and host_adv is not None:
            if host_adv.ndim == 1:
                host_adv = host_adv[:, None]
            return (
                torch.from_numpy((host_ratio < 1.0 - epsilon_low) & (host_adv < 0.0)),  # (P4)
                torch.from_numpy((host_ratio > 1.0 + epsilon_high) & (host_adv > 0.0)),  # (P4)
            )
    return clip_masks(ratio, advantages_2d, epsilon_low, epsilon_high)  # (P4)


# ----------------------------------------------------------------------------------------- aggregation


class AggregatedLoss(NamedTuple):
    """``loss`` (scalar, backpropagated for this micro-batch), ``loss_normalizer`` (the denominator, see
    :func:`aggregate_loss`), ``policy_loss`` (loss before the entropy bonus), ``entropy_loss`` (mean entropy
    over the effective mask, already divided by GAS; ``None`` without entropy bonus)."""

    loss: torch.Tensor
    loss_normalizer: torch.Tensor
    policy_loss: torch.Tensor
    entropy_loss: torch.Tensor | None = None


def aggregate_loss(
    per_token_loss: torch.Tensor,
    loss_mask: torch.Tensor | None,
    spec: GRPOSpec,
    num_items_in_batch: float | torch.Tensor | None = None,
    *,
    gradient_accumulation_steps: int | None = None,
    num_processes: int | None = None,
    steps_per_generation: int | None = None,
    max_completion_length: int | None = None,
    entropies: torch.Tensor | None = None,
    entropy_mask: torch.Tensor | None = None,
) -> AggregatedLoss:
    """Reduce (B, T) per-token losses of one micro-batch to the scalar that is backpropagated.  # (N1)–(N5)

    With m the loss mask, |o_i| = Σ_t m_it, B rows, K = gradient_accumulation_steps:

    * ``seq_mean_token_mean`` (grpo, sapo): (1/B) Σ_i (Σ_t m ℓ)/max(|o_i|,1) / K            (N1)
    * ``token_mean`` local (bnpo): Σ m ℓ / max(Σ m, 1) / K                                  (N2)
    * ``token_mean`` global (dapo, cispo, vespo): Σ m ℓ / (max(N,1)/P · K/S)                 (N3)
      with N = ``num_items_in_batch`` (loss tokens of the whole generation batch, all processes),
      P = num_processes, S = steps_per_generation. Without N: local Σ m · K (exact when micro-batches
      carry equal token counts).
    * ``seq_mean_token_sum_norm`` (dr_grpo): Σ m ℓ / (B · L_max) / K                        (N4)
    * ``seq_mean_token_sum`` (luspo): (1/B) Σ_i Σ_t m ℓ / K                                 (N5)

    Entropy bonus (spec.entropy_coef ≠ 0): loss −= c · Σ m_e H / max(Σ m_e, 1) / K         (N6)
    where m_e = m · entropy_mask. ``loss_normalizer`` is the single denominator where there is one
    (N2–N4: the token count or B·L_max, times K where K applies) and B·K for N1 / N5.
    """
    loss_values = as_f64(per_token_loss)
    mask = as_mask(loss_mask, loss_values)
    accumulation = gradient_accumulation_steps or spec.gradient_accumulation_steps
    processes = num_processes or spec.num_processes
    generation_steps = steps_per_generation or spec.steps_per_generation or accumulation
    n_rows = loss_values.shape[0]
    mode = spec.aggregation_effective
    if mode == "seq_mean_token_mean":
        row_means = (loss_values * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
        loss = row_means.mean() / accumulation  # (N1)
        normalizer = torch.scalar_tensor(float(n_rows * accumulation), dtype=DTYPE)
    elif mode == "token_mean":
        if spec.loss_type == "bnpo" or num_items_in_batch is None:
            normalizer = mask.sum().clamp(min=1.0) * accumulation  # (N2)
        else:
            normalizer = _items_normalizer(
                num_items_in_batch, processes, accumulation, generation_steps
            )  # (N3)
        loss = (loss_values * mask).sum() / normalizer
    elif mode == "seq_mean_token_sum_norm":
        length = max_completion_length or spec.max_completion_length or loss_values.shape[1]
        normalizer = torch.scalar_tensor(float(n_rows * length * accumulation), dtype=DTYPE)
        loss = (loss_values * mask).sum() / normalizer  # (N4)
    elif mode == "seq_mean_token_sum":
        loss = (loss_values * mask).sum(-1).mean() / accumulation  # (N5)
        normalizer = torch.scalar_tensor(float(n_rows * accumulation), dtype=DTYPE)
    else:  # pragma: no cover - GRPOSpec validates
        raise InputError(f"unknown aggregation {mode!r}", field="aggregation")
    policy = loss
    entropy_term = None
    if spec.entropy_coef != 0.0:
        if entropies is None:
            raise InputError("entropy_coef != 0 needs entropies", field="entropies")
        effective = mask if entropy_mask is None else mask * as_f64(entropy_mask)
        entropy_term = (as_f64(entropies) * effective).sum() / effective.sum().clamp(min=1.0) / accumulation
        loss = loss - spec.entropy_coef * entropy_term  # (N6)
    return AggregatedLoss(
        loss=loss, loss_normalizer=normalizer, policy_loss=policy, entropy_loss=entropy_term
    )


def _items_normalizer(
    num_items: float | torch.Tensor, processes: int, accumulation: int, generation_steps: int
) -> torch.Tensor:
    """max(N, 1) / P · K / S as a float64 scalar tensor.  # (N3)

    A number N is reduced in Python floats (the same IEEE double operations as on a 0-d float64 tensor,
    without a tensor per step of the formula); a tensor N in torch."""
    if isinstance(num_items, torch.Tensor):
        return as_f64(num_items).clamp(min=1.0) / processes * accumulation / generation_steps  # (N3)
    items = float(num_items)
    items = items if math.isnan(items) else max(items, 1.0)  # clamp(min=1): NaN stays NaN
    return torch.scalar_tensor(items / processes * accumulation / generation_steps, dtype=DTYPE)  # (N3)


def _adv_2d(advantages: torch.Tensor) -> torch.Tensor:
    advantages = as_f64(advantages)
    return advantages.unsqueeze(1) if advantages.dim() == 1 else advantages
