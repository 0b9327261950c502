"""A GRPO loss written independently of the reference (TRL's structure, float32), with plantable bugs.

``handwritten_loss(spec, bugs)`` is a probe loss callable; each bug name changes one branch of the loss.
"""

from __future__ import annotations

import torch

from grpo_check.config import GRPOSpec

BUGS = (
    "lower_clip_dropped",
    "upper_clip_dropped",
    "epsilon_high_ignored",
    "delta_ignored",
    "dual_clip_ignored",
    "token_level_ratio",
    "kl_k1",
    "entropy_mask_ignored",
    "off_policy_mask_ignored",
    "sampler_weight_ignored",
    "normaliser_counts_padding",
    "not_divided_by_accumulation",
    "steps_per_generation_ignored",
    "all_masked_row_nan",
    "padding_not_masked",
    "tool_mask_ignored",
    "normaliser_counts_tool_tokens",
    "cispo_cap_ignored",
    "sapo_temperatures_swapped",
    "detached",
    "advantages_clamped",
)


def _quantile_mask(entropies: torch.Tensor, mask: torch.Tensor, keep: float) -> torch.Tensor:
    pool = entropies[mask.bool()].float()
    if pool.numel() == 0:
        return torch.zeros_like(mask, dtype=torch.bool)
    threshold = torch.quantile(pool, 1.0 - keep)
    return (entropies * mask >= threshold) & mask.bool()


def handwritten_loss(spec: GRPOSpec, bugs: tuple[str, ...] = ()):
    unknown = set(bugs) - set(BUGS)
    assert not unknown, unknown

    def loss_fn(probe):
        t, meta = probe.tensors, probe.meta
        leaf = t["logps"].detach().float().clone().requires_grad_(True)
        logps = leaf.detach() if "detached" in bugs else leaf
        completion = t["completion_mask"].float()
        if "truncated" in t and spec.mask_truncated_completions:
            completion = completion * (~t["truncated"]).float().unsqueeze(1)
        mask = completion
        if "tool_mask" in t and "tool_mask_ignored" not in bugs:
            mask = mask * t["tool_mask"].float()
        if "padding_not_masked" in bugs:
            mask = torch.ones_like(mask)
        adv = t["advantages"].float().unsqueeze(1)
        old = t["old_logps"].float() if "old_logps" in t else logps.detach()
        log_ratio = logps - old
        if spec.importance_sampling_level == "sequence" and "token_level_ratio" not in bugs:
            log_ratio = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)
        coef_1 = torch.exp(log_ratio)
        if spec.beta != 0.0:
            ref = t["ref_logps"].float()
            kl = (logps - ref) if "kl_k1" in bugs else torch.exp(ref - logps) - (ref - logps) - 1
            if spec.use_bias_correction_kl:
                kl = kl * coef_1
        high = 1 + spec.epsilon_high_effective if "epsilon_high_ignored" not in bugs else 1 + spec.epsilon_low
        if spec.loss_type == "cispo":
            cap = 1e9 if "cispo_cap_ignored" in bugs else spec.epsilon_high_effective
            loss_t = -torch.clamp(coef_1, max=cap).detach() * adv * logps
        elif spec.loss_type == "sapo":
            pos, neg = spec.sapo_temperature_pos, spec.sapo_temperature_neg
            if "sapo_temperatures_swapped" in bugs:
                pos, neg = neg, pos
            tau = torch.where(adv > 0, torch.full_like(adv, pos), torch.full_like(adv, neg))
            loss_t = -torch.sigmoid(tau * (coef_1 - 1)) * 4 / tau * adv
        else:
            low = 0.0 if "lower_clip_dropped" in bugs else 1 - spec.epsilon_low
            high = 1e9 if "upper_clip_dropped" in bugs else high
            coef_2 = torch.clamp(coef_1, low, high)
            if spec.delta is not None and "delta_ignored" not in bugs:
                coef_1 = torch.clamp(coef_1, max=spec.delta)
            loss_t = -torch.min(coef_1 * adv, coef_2 * adv)
            if "advantages_clamped" in bugs:  # the clip applied to the advantages instead of the ratio
                loss_t = -torch.min(coef_1 * adv, coef_1 * torch.clamp(adv, 1 - spec.epsilon_low, high))
            if spec.dual_clip is not None and "dual_clip_ignored" not in bugs:
                loss_t = torch.where(adv < 0, torch.min(loss_t, -spec.dual_clip * adv), loss_t)
        if spec.off_policy_mask_threshold is not None and "off_policy_mask_ignored" not in bugs:
            sampling = t["sampler_logps"].float() if "sampler_logps" in t else old
            divergence = torch.nan_to_num(sampling - logps.detach(), nan=0.0)
            mean = (divergence * mask).sum(1, keepdim=True) / mask.sum(1, keepdim=True).clamp(min=1.0)
            loss_t = loss_t * ((adv >= 0) | (mean <= spec.off_policy_mask_threshold)).float()
        entropy_mask = None
        if spec.top_entropy_quantile < 1.0:
            entropy_mask = _quantile_mask(t["entropies"].float(), mask, spec.top_entropy_quantile)
            if "entropy_mask_ignored" not in bugs:
                loss_t = loss_t * entropy_mask
        if spec.sampler_is_correction and "sampler_weight_ignored" not in bugs:
            loss_t = loss_t * t["sampler_is_ratio"].float()
        if spec.beta != 0.0:
            loss_t = loss_t + spec.beta * kl
        window = 1 if "not_divided_by_accumulation" in bugs else meta["gradient_accumulation_steps"]
        generation_steps = window if "steps_per_generation_ignored" in bugs else meta["steps_per_generation"]
        counted = torch.ones_like(mask) if "normaliser_counts_padding" in bugs else mask
        if "normaliser_counts_tool_tokens" in bugs:
            counted = completion
        if spec.loss_type in ("grpo", "sapo"):
            row_counts = counted.sum(-1) if "all_masked_row_nan" in bugs else counted.sum(-1).clamp(min=1.0)
            loss = ((loss_t * mask).sum(-1) / row_counts).mean() / window
        elif spec.loss_type == "bnpo":
            loss = (loss_t * mask).sum() / counted.sum().clamp(min=1.0) / window
        elif spec.loss_type == "dr_grpo":
            loss = (loss_t * mask).sum() / (loss_t.shape[0] * meta["max_completion_length"]) / window
        elif spec.loss_type == "luspo":
            loss = (loss_t * mask).sum(-1).mean() / window
        else:  # dapo, cispo: the window's share of the generation batch's token count
            normaliser = (
                max(meta["num_items_in_batch"], 1.0) / meta["num_processes"] * window / generation_steps
            )
            loss = (loss_t * mask).sum() / normaliser
        if spec.entropy_coef != 0.0:
            effective = mask if entropy_mask is None else mask * entropy_mask
            entropies = t["entropies"].float()
            loss = (
                loss
                - spec.entropy_coef * (entropies * effective).sum() / effective.sum().clamp(min=1.0) / window
            )
        if "detached" in bugs:
            loss = loss + 0.0 * leaf.sum()
        return loss, leaf

    return loss_fn
