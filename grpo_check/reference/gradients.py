"""Stage `grad`: ∂loss/∂logps by float64 autograd and by the closed forms of spec §8 (G1–G9).

The closed forms are written independently of the autograd path (no call to ``per_token_loss`` for the
gradient itself), so ``closed_form_logps_grad == autograd_logps_grad`` is a real check of both.

Example::

    >>> import torch
    >>> from grpo_check.config import GRPOSpec
    >>> from grpo_check.reference import closed_form_logps_grad
    >>> spec = GRPOSpec(num_generations=2, loss_type="dapo")
    >>> logps = torch.tensor([[-1.0, -1.0, -1.0], [-1.0, -1.0, -1.0]])
    >>> mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    >>> closed_form_logps_grad(logps, None, torch.tensor([1.0, -1.0]), mask, spec)   # −A/Σ|o| on-policy
    tensor([[-0.2500, -0.2500, -0.2500],
            [ 0.2500,  0.0000,  0.0000]], dtype=torch.float64)
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from grpo_check.config import GRPOSpec
from grpo_check.findings import InputError
from grpo_check.reference._util import DTYPE, as_f64, as_mask
from grpo_check.reference.loss import CLIPPED_SURROGATE_TYPES, high_entropy_mask, vespo_gamma_weights
from grpo_check.reference.ratio import off_policy_sequence_mask
from grpo_check.reference.ratio import sampler_is_ratio as compute_sampler_is_ratio


def autograd_logps_grad(logps: torch.Tensor, loss_fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """∂ loss_fn(logps) / ∂logps in float64 by autograd (``logps`` is copied into a fresh leaf).  # (G0)"""
    leaf = as_f64(logps).detach().clone().requires_grad_(True)
    loss = loss_fn(leaf)
    (grad,) = torch.autograd.grad(loss, leaf, allow_unused=True)
    return torch.zeros_like(leaf) if grad is None else grad


def aggregation_weights(
    loss_mask: torch.Tensor,
    spec: GRPOSpec,
    num_items_in_batch: float | torch.Tensor | None = None,
    *,
    gradient_accumulation_steps: int | None = None,
    num_processes: int | None = None,
    steps_per_generation: int | None = None,
    max_completion_length: int | None = None,
) -> torch.Tensor:
    """W_{i,t} = ∂loss/∂ℓ_{i,t}: the weight each token's per-token loss gets in the aggregate.  # (G1)

    N1: m/(B·max(|o_i|,1)·K); N2: m/(max(Σm,1)·K); N3: m·P·S/(max(N,1)·K); N4: m/(B·L_max·K); N5: m/(B·K).
    """
    mask = as_f64(loss_mask)
    rows = mask.shape[0]
    accumulation = gradient_accumulation_steps or spec.gradient_accumulation_steps
    processes = num_processes or spec.num_processes
    generation_steps = steps_per_generation or spec.steps_per_generation or accumulation
    mode = spec.aggregation_effective
    if mode == "seq_mean_token_mean":
        return mask / (rows * mask.sum(-1, keepdim=True).clamp(min=1.0) * accumulation)
    if mode == "token_mean":
        if spec.loss_type == "bnpo" or num_items_in_batch is None:
            return mask / (mask.sum().clamp(min=1.0) * accumulation)
        items = float(as_f64(num_items_in_batch).clamp(min=1.0))
        return mask * processes * generation_steps / (items * accumulation)
    if mode == "seq_mean_token_sum_norm":
        length = max_completion_length or spec.max_completion_length or mask.shape[1]
        return mask / (rows * length * accumulation)
    if mode == "seq_mean_token_sum":
        return mask / (rows * accumulation)
    raise InputError(f"unknown aggregation {mode!r}", field="aggregation")  # pragma: no cover


def kl_estimator_grad(logps: torch.Tensor, ref_logps: torch.Tensor, estimator: str) -> torch.Tensor:
    """∂k/∂logp: k1 → 1; k2 → logp − ref_logp; k3 → 1 − π_ref/π.  # (G6)"""
    diff = as_f64(logps) - as_f64(ref_logps)
    if estimator == "k1":
        return torch.ones_like(diff)
    if estimator == "k2":
        return diff
    if estimator == "k3":
        return -torch.expm1(-diff)
    raise InputError(f"unknown KL estimator {estimator!r}", field="kl_estimator")


def _kl_value(logps: torch.Tensor, ref_logps: torch.Tensor, estimator: str) -> torch.Tensor:
    diff = as_f64(logps) - as_f64(ref_logps)
    if estimator == "k1":
        return diff
    if estimator == "k2":
        return 0.5 * diff**2
    return torch.expm1(-diff) + diff


def _clipped_surrogate_dlogratio(ratio: torch.Tensor, adv: torch.Tensor, spec: GRPOSpec) -> torch.Tensor:
    """∂ℓ/∂log ρ of −min(ρ̃A, clip(ρ)A) [dual-clipped]: −Aρ on the active branch, 0 where a clip binds.  # (G2)

    At exact ties torch.min splits the gradient evenly between its arguments; the same is done here.
    """
    low, high = 1.0 - spec.epsilon_low, 1.0 + spec.epsilon_high_effective
    capped = torch.clamp(ratio, max=spec.delta) if spec.delta is not None else ratio
    clipped = torch.clamp(ratio, low, high)
    unclipped_term, clipped_term = capped * adv, clipped * adv
    d_unclipped = (
        adv * ratio * ((ratio <= spec.delta) if spec.delta is not None else torch.ones_like(ratio)).to(DTYPE)
    )
    d_clipped = adv * ratio * ((ratio >= low) & (ratio <= high)).to(DTYPE)
    pick_unclipped = torch.where(
        unclipped_term < clipped_term, 1.0, torch.where(unclipped_term > clipped_term, 0.0, 0.5)
    )
    base_value = -torch.min(unclipped_term, clipped_term)
    base_grad = -(pick_unclipped * d_unclipped + (1.0 - pick_unclipped) * d_clipped)
    if spec.dual_clip is None:
        return base_grad
    cap = -spec.dual_clip * adv
    keep_base = torch.where(base_value < cap, 1.0, torch.where(base_value > cap, 0.0, 0.5))
    return torch.where(adv < 0, keep_base * base_grad, base_grad)  # (G3)


def closed_form_logps_grad(
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
    num_items_in_batch: float | torch.Tensor | None = None,
    gradient_accumulation_steps: int | None = None,
    num_processes: int | None = None,
    steps_per_generation: int | None = None,
    max_completion_length: int | None = None,
) -> torch.Tensor:
    """∂loss/∂logp_{i,t} from the closed forms (G1)–(G7), same arguments as per_token_loss + aggregate_loss.

    grad = W ⊙ c ⊙ ∂policy/∂logp (token level, diagonal), or for GSPO (sequence level)
    grad_{i,u} = (Σ_t W_{i,t} c_{i,t}) · ∂policy_i/∂log s_i · m_{i,u}/max(|o_i|,1)   (G4),
    plus β · ∂(Σ W kl)/∂logp (G6, G7), where c = off-policy mask · entropy mask · sampler IS weight.
    The entropy bonus does not depend on ``logps`` and contributes nothing.
    """
    logps = as_f64(logps).detach()
    old = logps if old_logps is None else as_f64(old_logps)
    mask = as_mask(loss_mask, logps)
    adv = as_f64(advantages)
    adv = adv.unsqueeze(1) if adv.dim() == 1 else adv
    weights = aggregation_weights(
        mask, spec, num_items_in_batch,
        gradient_accumulation_steps=gradient_accumulation_steps, num_processes=num_processes,
        steps_per_generation=steps_per_generation, max_completion_length=max_completion_length,
    )  # fmt: skip
    sequence_level = spec.importance_sampling_level == "sequence"
    lengths = mask.sum(-1, keepdim=True).clamp(min=1.0)
    token_log_ratio = logps - old
    log_ratio = (
        (token_log_ratio * mask).sum(-1, keepdim=True) / lengths if sequence_level else token_log_ratio
    )
    ratio = log_ratio.exp()

    factor = torch.ones_like(logps)
    if spec.off_policy_mask_threshold is not None:
        reference = old if sampler_logps is None else sampler_logps
        factor = factor * off_policy_sequence_mask(
            adv, logps, reference, mask, spec.off_policy_mask_threshold
        )
    if spec.top_entropy_quantile < 1.0:
        if entropies is None:
            raise InputError("top_entropy_quantile < 1 needs entropies", field="entropies")
        factor = factor * high_entropy_mask(entropies, mask, spec.top_entropy_quantile).to(DTYPE)
    if sampler_is_ratio is None and spec.sampler_is_correction:
        if sampler_logps is None:
            raise InputError("sampler_is_correction needs sampler_logps", field="sampler_logps")
        sampler_is_ratio = compute_sampler_is_ratio(
            old, sampler_logps, mask, spec.sampler_is_mode, spec.sampler_is_clip_min, spec.sampler_is_clip_max
        )
    if sampler_is_ratio is not None and spec.loss_type != "vespo":
        factor = factor * as_f64(sampler_is_ratio)

    # ∂policy/∂logp: either diagonal (per token) or through log s_i (ratio-driven, sequence level).
    through_ratio: torch.Tensor | None = None  # ∂ℓ/∂log ρ
    direct: torch.Tensor | None = None  # ∂ℓ_{i,t}/∂logp_{i,t} that does not go through ρ
    if spec.loss_type in CLIPPED_SURROGATE_TYPES:
        through_ratio = _clipped_surrogate_dlogratio(ratio, adv, spec)  # (G2) (G3)
    elif spec.loss_type == "sapo":
        tau = torch.where(adv > 0, torch.full_like(adv, spec.sapo_temperature_pos), spec.sapo_temperature_neg)
        gate = torch.sigmoid(tau * (ratio - 1.0))
        through_ratio = -4.0 * gate * (1.0 - gate) * ratio * adv  # (G5)
    elif spec.loss_type == "cispo":
        direct = -torch.clamp(ratio, max=spec.epsilon_high_effective) * adv  # (G5)
    elif spec.loss_type == "vespo":
        phi = vespo_gamma_weights(
            adv, token_log_ratio, mask, None if sampler_is_ratio is None else as_f64(sampler_is_ratio),
            spec.vespo_k_pos, spec.vespo_lambda_pos, spec.vespo_k_neg, spec.vespo_lambda_neg,
        )  # fmt: skip
        direct = -phi * adv  # (G5)
    weighted = weights * factor
    grad = torch.zeros_like(logps)
    if direct is not None:
        grad = grad + weighted * direct.expand_as(logps)
    if through_ratio is not None:
        if sequence_level:
            per_row = (weighted * through_ratio.expand_as(logps)).sum(-1, keepdim=True)
            grad = grad + per_row * mask / lengths  # (G4)
        else:
            grad = grad + weighted * through_ratio.expand_as(logps)

    if spec.beta != 0.0:
        if ref_logps is None:
            raise InputError("beta != 0 needs ref_logps", field="ref_logps")
        k_grad = kl_estimator_grad(logps, ref_logps, spec.kl_estimator)  # (G6)
        if not spec.use_bias_correction_kl:
            grad = grad + spec.beta * weights * k_grad
        else:
            k_value = _kl_value(logps, ref_logps, spec.kl_estimator)
            if sequence_level:  # (G7) ρ_i = s_i shared by the row
                spread = (weights * k_value).sum(-1, keepdim=True) * ratio * mask / lengths
                grad = grad + spec.beta * (weights * ratio * k_grad + spread)
            else:  # (G7) ∂(ρk)/∂logp = ρ(k + k')
                grad = grad + spec.beta * weights * ratio * (k_value + k_grad)
    return grad
