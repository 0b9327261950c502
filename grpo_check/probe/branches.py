"""Which branch of the configured loss each element of a probe exercises.

:func:`branch_masks` returns, for one probe, a (B, T) boolean mask per branch id (an element may sit in
several branches: "ratio below 1 − ε_low with A < 0" and "KL term"). The branch ids and their plain-language
labels are in :data:`BRANCHES`; the equations they refer to are in ``reference/grpo-algorithm.md``.

Example::

    >>> from grpo_check.config import GRPOSpec
    >>> from grpo_check.probe.batches import build_probes
    >>> from grpo_check.probe.branches import branch_masks
    >>> spec = GRPOSpec(num_generations=4, loss_type="dapo", epsilon_high=0.28)
    >>> grid = next(p for p in build_probes(spec) if p.name == "ratio-grid")
    >>> sorted(b for b, m in branch_masks(grid, spec).items() if m.any())[:3]
    ['advantage.zero', 'clip.inside', 'clip.lower_binds']
"""

from __future__ import annotations

import torch

from grpo_check.config import GRPOSpec
from grpo_check.probe.batches import ProbeBatch, probe_loss_mask
from grpo_check.reference import as_f64
from grpo_check.reference.loss import CLIPPED_SURROGATE_TYPES, high_entropy_mask
from grpo_check.reference.ratio import importance_log_ratio, off_policy_sequence_mask

BRANCHES: dict[str, str] = {
    "clip.lower_binds": "ρ < 1 − ε_low with A < 0: the lower clip binds, gradient 0 (O1, P4)",
    "clip.lower_free": "ρ < 1 − ε_low with A > 0: the unclipped term is the minimum (O1)",
    "clip.inside": "1 − ε_low ≤ ρ ≤ 1 + ε_high (O1)",
    "clip.upper_binds": "ρ > 1 + ε_high with A > 0: the upper clip binds, gradient 0 (O1, P4)",
    "clip.upper_free": "ρ > 1 + ε_high with A < 0, ρ ≤ δ: the unclipped term is the minimum (O1)",
    "delta.caps": "ρ > δ: the two-sided bound caps the unclipped ratio, gradient 0 (P5)",
    "dual_clip.caps": "A < 0 and the loss exceeds c·|A|: the dual clip binds (O2)",
    "cispo.capped": "ρ > ε_max: the CISPO weight is capped at ε_max (O3)",
    "cispo.below_cap": "ρ ≤ ε_max: the CISPO weight is ρ (O3)",
    "sapo.positive": "A > 0: SAPO gate with τ_pos (O4)",
    "sapo.negative": "A < 0: SAPO gate with τ_neg (O4)",
    "sapo.far": "|ρ − 1| > 0.3: the SAPO gate far from its linear part (O4)",
    "vespo.positive": "A ≥ 0: VESPO gamma weight with (k_pos, λ_pos) (O5)",
    "vespo.negative": "A < 0: VESPO gamma weight with (k_neg, λ_neg) (O5)",
    "vespo.clamped": "Σ log ρ of the row past the clamp at 20 of the gamma weight (O5)",
    "mask.padding": "masked tokens carrying extreme ratios: must not count (M1)",
    "mask.all_masked_row": "a row with no loss token (M1, N1 max(|o|, 1))",
    "mask.single_token_row": "a row with one loss token",
    "mask.truncated_row": "a completion cut at the length limit (M1: masked with mask_truncated_completions)",
    "mask.tool": "tool-output tokens inside a completion: tool_mask = 0 (M1)",
    "entropy_mask.keeps": "entropy ≥ the top-entropy quantile: kept (M2)",
    "entropy_mask.drops": "entropy < the top-entropy quantile: dropped (M2)",
    "off_policy.drops": "A < 0 and divergence > threshold: the row is dropped (P8)",
    "off_policy.keeps_positive": "A ≥ 0 and divergence > threshold: the row is kept (P8)",
    "off_policy.keeps_close": "divergence ≤ threshold: the row is kept (P8)",
    "sampler_is.zeroed": "sampler correction weight 0 (masked by the sampler correction, P7)",
    "sampler_is.weighted": "sampler correction weight ≠ 1 (P7)",
    "advantage.zero": "A = 0: no policy gradient",
    "ratio.on_policy": "on-policy: no old log-probs, ρ ≡ 1 (P1)",
    "ratio.sequence_level": "sequence-level importance ratio (GSPO, P2)",
    "kl.term": "β·KL added per token (K3, O6)",
    "kl.ratio_weighted": "KL weighted by ρ ≠ 1 (use_bias_correction_kl, K4)",
    "entropy.bonus": "entropy bonus in the loss (N6)",
    "normaliser.seq_mean_token_mean": "per-row token mean, then mean over rows, ÷K (N1: grpo, sapo)",
    "normaliser.token_mean_local": "Σ over the micro-batch's tokens ÷ its token count ÷K (N2: bnpo)",
    "normaliser.token_mean_global": "Σ ÷ (N/P · K/S), N = num_items_in_batch (N3: dapo, cispo, vespo)",
    "normaliser.seq_mean_token_sum_norm": "Σ ÷ (B · L_max · K) (N4: dr_grpo)",
    "normaliser.seq_mean_token_sum": "per-row token sum, mean over rows, ÷K (N5: luspo)",
    "normaliser.accumulation": "gradient accumulation K > 1 (N1–N5)",
    "normaliser.short_window": "an accumulation window shorter than gradient_accumulation_steps",
    "normaliser.steps_per_generation": "steps_per_generation S ≠ K rescales N (N3)",
    "normaliser.processes": "several processes: N counts all of them (N3)",
}
"""Branch id → what the branch is (with the equation ids of ``reference/grpo-algorithm.md``)."""


def branch_masks(probe: ProbeBatch, spec: GRPOSpec) -> dict[str, torch.Tensor]:
    """Branch id → (B, T) bool: the loss tokens of ``probe`` in that branch (row-level branches cover the row)."""
    t = probe.tensors
    mask = probe_loss_mask(probe, spec)
    valid = mask != 0
    rows, length = valid.shape
    logps = as_f64(t["logps"])
    old = as_f64(t["old_logps"]) if "old_logps" in t else logps
    adv = as_f64(t["advantages"])
    adv = (adv.unsqueeze(1) if adv.dim() == 1 else adv).expand(rows, length)
    log_ratio = importance_log_ratio(logps, old, mask, spec.importance_sampling_level)
    ratio = log_ratio.exp().expand(rows, length)
    out: dict[str, torch.Tensor] = {}

    def put(name: str, where: torch.Tensor) -> None:
        out[name] = valid & where.expand(rows, length)

    if "old_logps" not in t:
        put("ratio.on_policy", torch.ones_like(valid))
    if spec.importance_sampling_level == "sequence":
        put("ratio.sequence_level", torch.ones_like(valid))
    put("advantage.zero", adv == 0)
    low, high = 1.0 - spec.epsilon_low, 1.0 + spec.epsilon_high_effective
    if spec.loss_type in CLIPPED_SURROGATE_TYPES:
        past_delta = (ratio > spec.delta) if spec.delta is not None else torch.zeros_like(valid)
        put("clip.lower_binds", (ratio < low) & (adv < 0))
        put("clip.lower_free", (ratio < low) & (adv > 0))
        put("clip.inside", (ratio >= low) & (ratio <= high) & (adv != 0))
        put("clip.upper_binds", (ratio > high) & (adv > 0) & ~past_delta)
        put("clip.upper_free", (ratio > high) & (adv < 0) & ~past_delta)
        put("delta.caps", past_delta & (adv != 0))
        if spec.dual_clip is not None:
            capped = torch.clamp(ratio, max=spec.delta) if spec.delta is not None else ratio
            policy = -torch.min(capped * adv, torch.clamp(ratio, low, high) * adv)
            put("dual_clip.caps", (adv < 0) & (policy > -spec.dual_clip * adv))
    elif spec.loss_type == "cispo":
        cap = spec.epsilon_high_effective
        put("cispo.capped", (ratio > cap) & (adv != 0))
        put("cispo.below_cap", (ratio <= cap) & (adv != 0))
    elif spec.loss_type == "sapo":
        put("sapo.positive", adv > 0)
        put("sapo.negative", adv < 0)
        put("sapo.far", ((ratio - 1.0).abs() > 0.3) & (adv != 0))
    elif spec.loss_type == "vespo":
        put("vespo.positive", adv >= 0)
        put("vespo.negative", adv < 0)
        token_log_ratio = (logps - old).clamp(-20.0, 20.0) * mask
        row_sum = token_log_ratio.sum(-1, keepdim=True)
        put("vespo.clamped", (row_sum > 20.0) | (row_sum < -18.42))  # log 1e-8 = −18.42
    padded_rows = valid.any(-1, keepdim=True)
    out["mask.padding"] = (~valid) & padded_rows.expand(rows, length)
    empty = ~padded_rows
    out["mask.all_masked_row"] = empty.expand(rows, length).clone()
    put("mask.single_token_row", (mask.sum(-1, keepdim=True) == 1))
    if "truncated" in t:
        truncated = t["truncated"].to(torch.bool).unsqueeze(1).expand(rows, length)
        # masked (the whole row leaves the loss) with mask_truncated_completions, an ordinary row otherwise
        out["mask.truncated_row"] = (
            truncated.clone() if spec.mask_truncated_completions else truncated & valid
        )
    if "tool_mask" in t:
        out["mask.tool"] = (t["tool_mask"] == 0) & (t["completion_mask"] != 0)
    if spec.beta != 0.0:
        put("kl.term", torch.ones_like(valid))
        if spec.use_bias_correction_kl:
            put("kl.ratio_weighted", (ratio - 1.0).abs() > 1e-6)
    if spec.top_entropy_quantile < 1.0 and "entropies" in t:
        keep = high_entropy_mask(t["entropies"], mask, spec.top_entropy_quantile)
        put("entropy_mask.keeps", keep)
        put("entropy_mask.drops", ~keep)
    if spec.entropy_coef != 0.0:
        put("entropy.bonus", torch.ones_like(valid))
    if spec.off_policy_mask_threshold is not None:
        reference = as_f64(t["sampler_logps"]) if "sampler_logps" in t else old
        keep = (
            off_policy_sequence_mask(adv[:, :1], logps, reference, mask, spec.off_policy_mask_threshold) != 0
        )
        divergence = torch.nan_to_num(reference - logps, nan=0.0)
        far = ((divergence * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1.0)) > float(
            spec.off_policy_mask_threshold
        )
        put("off_policy.drops", ~keep)
        put("off_policy.keeps_positive", keep & far)
        put("off_policy.keeps_close", keep & ~far)
    if "sampler_is_ratio" in t:
        weight = as_f64(t["sampler_is_ratio"]).expand(rows, length)
        put("sampler_is.zeroed", weight == 0)
        put("sampler_is.weighted", (weight != 0) & (weight != 1))
    _normaliser_branches(probe, spec, put, valid)
    return {name: value for name, value in out.items() if bool(value.any())}


def _normaliser_branches(probe: ProbeBatch, spec: GRPOSpec, put, valid: torch.Tensor) -> None:
    everywhere = torch.ones_like(valid)
    mode = spec.aggregation_effective
    if mode == "token_mean":
        mode = "token_mean_local" if spec.loss_type == "bnpo" else "token_mean_global"
    put(f"normaliser.{mode}", everywhere)
    window = int(probe.meta.get("gradient_accumulation_steps") or 1)
    if window > 1:
        put("normaliser.accumulation", everywhere)
    if window < spec.gradient_accumulation_steps:
        put("normaliser.short_window", everywhere)
    if mode == "token_mean_global":
        if int(probe.meta.get("steps_per_generation") or window) != window:
            put("normaliser.steps_per_generation", everywhere)
        if int(probe.meta.get("num_processes") or 1) > 1:
            put("normaliser.processes", everywhere)


def exercised(probe: ProbeBatch, spec: GRPOSpec) -> list[str]:
    """The branch ids ``probe`` exercises (in :data:`BRANCHES` order)."""
    present = branch_masks(probe, spec)
    return [name for name in BRANCHES if name in present]


def branches_at(masks: dict[str, torch.Tensor], row: int, token: int) -> list[str]:
    """The branch ids element (row, token) is in (in :data:`BRANCHES` order)."""
    return [name for name in BRANCHES if name in masks and bool(masks[name][row, token])]


def branches_among(masks: dict[str, torch.Tensor], where: torch.Tensor) -> list[str]:
    """The branch ids with at least one element in ``where`` (B, T bool)."""
    return [name for name in BRANCHES if name in masks and bool((masks[name] & where).any())]
