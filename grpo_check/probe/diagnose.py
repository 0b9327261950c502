"""Known wrong variants of the loss: when the trainer's numbers on a probe match one, that is the diagnosis.

Each :class:`Variant` is the reference with one known bug planted (the lower clip bound dropped, ``delta``
ignored, the normaliser counting padding, the loss not divided by the accumulation steps, ...). A probe that
failed is re-run through every variant that applies to the configuration; the first whose loss *and*
∂loss/∂logps match the trainer's within the same tolerances names the bug. The variants are tried in the
order below: the most specific first.

Example::

    >>> from grpo_check.config import GRPOSpec
    >>> from grpo_check.probe.diagnose import variants_for
    >>> [v.id for v in variants_for(GRPOSpec(loss_type="dapo", delta=1.5))][:3]
    ['clip.lower_missing', 'clip.upper_missing', 'clip.none']
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from grpo_check.config import AGGREGATIONS, GRPOSpec
from grpo_check.probe._reference import (
    reference_outcome,
    reference_outcome_with_normaliser_mask,
    with_changes,
)
from grpo_check.probe.batches import ProbeBatch, probe_loss_mask
from grpo_check.reference.loss import CLIPPED_SURROGATE_TYPES

Outcome = tuple[torch.Tensor, torch.Tensor]
NO_BOUND = 1e9  # an ε so large that a clip bound never binds


@dataclasses.dataclass(frozen=True)
class Variant:
    """One known wrong loss: ``outcome(probe, spec)`` is its (loss, ∂loss/∂logps), or None where it is the
    same as the correct loss for this configuration."""

    id: str
    cause: str
    fix: str
    catalog_id: str | None
    outcome: Callable[[ProbeBatch, GRPOSpec], Outcome | None]
    applies: Callable[[GRPOSpec], bool] = lambda spec: True


def _spec(**changes: object) -> Callable[[ProbeBatch, GRPOSpec], Outcome | None]:
    def outcome(probe: ProbeBatch, spec: GRPOSpec) -> Outcome | None:
        changed = spec.replace(**{k: (v(spec) if callable(v) else v) for k, v in changes.items()})
        return None if changed == spec else reference_outcome(probe, changed)

    return outcome


def _meta(
    **changes: Callable[[ProbeBatch, GRPOSpec], object],
) -> Callable[[ProbeBatch, GRPOSpec], Outcome | None]:
    def outcome(probe: ProbeBatch, spec: GRPOSpec) -> Outcome | None:
        values = {k: f(probe, spec) for k, f in changes.items()}
        if all(probe.meta.get(k) == v for k, v in values.items()):
            return None
        return reference_outcome(with_changes(probe, meta=values), spec)

    return outcome


def _negated_advantages(probe: ProbeBatch, spec: GRPOSpec) -> Outcome | None:
    return reference_outcome(with_changes(probe, tensors={"advantages": -probe.tensors["advantages"]}), spec)


def _negated_loss(probe: ProbeBatch, spec: GRPOSpec) -> Outcome | None:
    loss, grad = reference_outcome(probe, spec)
    return -loss, -grad


def _detached(probe: ProbeBatch, spec: GRPOSpec) -> Outcome | None:
    loss, grad = reference_outcome(probe, spec)
    return loss, torch.zeros_like(grad)


def _advantages_clamped(probe: ProbeBatch, spec: GRPOSpec) -> Outcome | None:
    # ρ ≥ 0: −min(ρ·A, ρ·clip(A)) = −ρ·min(A, clip(A)), the unclipped surrogate of the advantages min(A, clip(A))
    advantages = probe.tensors["advantages"]
    high = 1 + spec.epsilon_high_effective
    capped = torch.minimum(advantages, torch.clamp(advantages, 1 - spec.epsilon_low, high))
    if torch.equal(capped, advantages):
        return None
    changed = with_changes(probe, tensors={"advantages": capped})
    return reference_outcome(changed, spec.replace(epsilon=1.0, epsilon_high=NO_BOUND))


def _sampler_ignored(probe: ProbeBatch, spec: GRPOSpec) -> Outcome | None:
    if "sampler_is_ratio" not in probe.tensors:
        return None
    changed = with_changes(probe, tensors={"sampler_is_ratio": None})
    return reference_outcome(changed, spec.replace(sampler_is_correction=False))


def _tool_mask_ignored(probe: ProbeBatch, spec: GRPOSpec) -> Outcome | None:
    if "tool_mask" not in probe.tensors:
        return None
    return reference_outcome(with_changes(probe, tensors={"tool_mask": None}), spec)


def _normaliser_counts(which: str) -> Callable[[ProbeBatch, GRPOSpec], Outcome | None]:
    def outcome(probe: ProbeBatch, spec: GRPOSpec) -> Outcome | None:
        t = probe.tensors
        mask = t["completion_mask"]
        if which == "padding":
            counted = torch.ones_like(mask, dtype=torch.float64)
        else:  # the completion mask without the tool mask / truncation
            counted = (mask != 0).to(torch.float64)
            if "truncated" in t and spec.mask_truncated_completions:
                counted = torch.maximum(counted, t["truncated"].to(torch.float64).unsqueeze(1))
        if torch.equal(counted, probe_loss_mask(probe, spec)):
            return None
        return reference_outcome_with_normaliser_mask(probe, spec, counted)

    return outcome


def _aggregation(mode: str) -> Callable[[ProbeBatch, GRPOSpec], Outcome | None]:
    def outcome(probe: ProbeBatch, spec: GRPOSpec) -> Outcome | None:
        if spec.aggregation_effective == mode:
            return None
        return reference_outcome(probe, spec.replace(aggregation=mode))

    return outcome


_AGGREGATION_WORDS = {
    "token_mean": "a token mean (bnpo/dapo)",
    "seq_mean_token_mean": "a mean of per-row token means (grpo)",
    "seq_mean_token_sum": "a mean of per-row token sums (luspo)",
    "seq_mean_token_sum_norm": "a sum over B·L_max (dr_grpo)",
}


def _clipped(spec: GRPOSpec) -> bool:
    return spec.loss_type in CLIPPED_SURROGATE_TYPES


def _global(spec: GRPOSpec) -> bool:
    return spec.aggregation_effective == "token_mean" and spec.loss_type != "bnpo"


def _window(probe: ProbeBatch) -> int:
    return int(probe.meta.get("gradient_accumulation_steps") or 1)


VARIANTS: tuple[Variant, ...] = (
    Variant(
        "clip.lower_missing",
        "the lower clip bound 1 − ε_low is not applied: tokens with ρ < 1 − ε_low and A < 0 keep their gradient "
        "(clipping implementation error)",
        "clip the ratio to [1 − ε_low, 1 + ε_high] before taking the minimum with the unclipped term",
        "21",
        _spec(epsilon=1.0, epsilon_high=lambda s: s.epsilon_high_effective),
        lambda s: _clipped(s) and s.epsilon_low < 1.0,
    ),
    Variant(
        "clip.upper_missing",
        "the upper clip bound 1 + ε_high is not applied: tokens with ρ > 1 + ε_high and A > 0 keep their gradient",
        "clip the ratio to [1 − ε_low, 1 + ε_high] before taking the minimum with the unclipped term",
        "21",
        _spec(epsilon_high=NO_BOUND),
        _clipped,
    ),
    Variant(
        "clip.advantages_clamped",
        "the clip is applied to the advantages instead of the ratio: −min(ρ·A, ρ·clip(A, 1 − ε_low, 1 + ε_high)), "
        "so advantages above 1 + ε_high are capped and the ratio is never clipped",
        "clip the ratio, not the advantage: −min(ρ·A, clip(ρ, 1 − ε_low, 1 + ε_high)·A)",
        "21",
        _advantages_clamped,
        lambda s: _clipped(s) and s.delta is None and s.dual_clip is None,
    ),
    Variant(
        "clip.none",
        "the ratio is not clipped at all (the clipped term is computed but not used)",
        "use −min(ρ·A, clip(ρ, 1 − ε_low, 1 + ε_high)·A) as the per-token loss",
        "21",
        _spec(epsilon=1.0, epsilon_high=NO_BOUND),
        _clipped,
    ),
    Variant(
        "clip.upper_uses_epsilon_low",
        "the upper clip bound uses ε_low: clip-higher (epsilon_high) is computed but not used",
        "clip above at 1 + epsilon_high, not 1 + epsilon",
        "21",
        _spec(epsilon_high=lambda s: s.epsilon_low),
        lambda s: _clipped(s) and s.epsilon_high_effective != s.epsilon_low,
    ),
    Variant(
        "clip.lower_uses_epsilon_high",
        "the lower clip bound uses ε_high instead of ε_low",
        "clip below at 1 − epsilon, not 1 − epsilon_high",
        "21",
        _spec(
            epsilon=lambda s: min(s.epsilon_high_effective, 1.0),
            epsilon_high=lambda s: s.epsilon_high_effective,
        ),
        lambda s: _clipped(s) and s.epsilon_high_effective != s.epsilon_low,
    ),
    Variant(
        "delta.ignored",
        "delta (the two-sided bound) is ignored: the unclipped ratio is not capped at δ, so tokens with ρ > δ and "
        "A < 0 keep a gradient that grows with ρ",
        "cap the unclipped ratio: ρ̃ = min(ρ, delta) in the unclipped term of the minimum",
        "21",
        _spec(delta=None),
        lambda s: _clipped(s) and s.delta is not None,
    ),
    Variant(
        "dual_clip.ignored",
        "the dual clip c·|A| for negative advantages is not applied",
        "for A < 0 take min(loss, c·|A|)",
        "21",
        _spec(dual_clip=None),
        lambda s: _clipped(s) and s.dual_clip is not None,
    ),
    Variant(
        "cispo.cap_ignored",
        "the CISPO weight is not capped at ε_max (epsilon_high)",
        "use min(ρ, epsilon_high), detached, as the CISPO weight",
        None,
        _spec(epsilon_high=NO_BOUND),
        lambda s: s.loss_type == "cispo",
    ),
    Variant(
        "ratio.level_swapped",
        "the importance ratio is taken at the wrong level (per token instead of per sequence, or the reverse)",
        "follow importance_sampling_level: sequence = exp(masked mean of the token log-ratios)",
        None,
        _spec(
            importance_sampling_level=lambda s: (
                "token" if s.importance_sampling_level == "sequence" else "sequence"
            )
        ),
    ),
    Variant(
        "kl.k1",
        "the KL term is k1 (log π/π_ref), not k3: its gradient is 1 per token",
        "use k3 = exp(ref − logp) − (ref − logp) − 1",
        "18",
        _spec(kl_estimator="k1"),
        lambda s: s.beta != 0.0,
    ),
    Variant(
        "kl.k2",
        "the KL term is k2 (½ (log π/π_ref)²), not k3",
        "use k3 = exp(ref − logp) − (ref − logp) − 1",
        "18",
        _spec(kl_estimator="k2"),
        lambda s: s.beta != 0.0,
    ),
    Variant(
        "kl.bias_correction_flipped",
        "the KL term's importance weighting (use_bias_correction_kl) is the opposite of the configuration's",
        "multiply the per-token KL by the importance ratio exactly when use_bias_correction_kl is set",
        "18",
        _spec(use_bias_correction_kl=lambda s: not s.use_bias_correction_kl),
        lambda s: s.beta != 0.0,
    ),
    Variant(
        "entropy_mask.ignored",
        "the top-entropy mask (top_entropy_quantile) is not applied to the policy loss",
        "multiply the per-token policy loss by the high-entropy mask",
        None,
        _spec(top_entropy_quantile=1.0),
        lambda s: s.top_entropy_quantile < 1.0,
    ),
    Variant(
        "off_policy.ignored",
        "the off-policy sequence mask is not applied",
        "multiply the per-token policy loss by the off-policy mask",
        None,
        _spec(off_policy_mask_threshold=None),
        lambda s: s.off_policy_mask_threshold is not None,
    ),
    Variant(
        "sampler_is.ignored",
        "the sampler importance-sampling correction is not applied to the loss",
        "multiply the per-token policy loss by the sampler correction weight",
        "1",
        _sampler_ignored,
        lambda s: s.sampler_is_correction,
    ),
    Variant(
        "mask.tool_ignored",
        "the tool mask is ignored: tool-output tokens are trained on and counted",
        "multiply the loss mask by tool_mask (1 = policy-generated token) in the loss and its normaliser",
        "28",
        _tool_mask_ignored,
    ),
    Variant(
        "normaliser.not_divided_by_accumulation",
        "the loss is not divided by the gradient-accumulation steps: the accumulated gradient is K× too large",
        "divide each micro-batch's loss by current_gradient_accumulation_steps (once)",
        "4",
        _meta(gradient_accumulation_steps=lambda p, s: 1),
        lambda s: True,
    ),
    Variant(
        "normaliser.divided_by_accumulation_twice",
        "the loss is divided by the gradient-accumulation steps twice (by the loss and again by the trainer)",
        "divide by current_gradient_accumulation_steps once: in the loss or in the trainer, not both",
        "4",
        _meta(gradient_accumulation_steps=lambda p, s: _window(p) ** 2),
        lambda s: True,
    ),
    Variant(
        "normaliser.steps_per_generation_ignored",
        "num_items_in_batch is not rescaled to one accumulation window (N/P instead of N/P·K/S; TRL PR #6024)",
        "normalise by num_items_in_batch / num_processes · gradient_accumulation_steps / steps_per_generation",
        "4",
        _meta(steps_per_generation=lambda p, s: _window(p)),
        _global,
    ),
    Variant(
        "normaliser.processes_ignored",
        "num_items_in_batch (counted over every process) is not divided by the number of processes",
        "normalise by num_items_in_batch / num_processes · K / S",
        "4",
        _meta(num_processes=lambda p, s: 1),
        _global,
    ),
    Variant(
        "normaliser.local_count",
        "the normaliser is the micro-batch's own token count, not num_items_in_batch (the window's count)",
        "normalise dapo/cispo/vespo by num_items_in_batch / num_processes · K / S",
        "4",
        _meta(num_items_in_batch=lambda p, s: None),
        _global,
    ),
    Variant(
        "normaliser.counts_padding",
        "the normaliser counts masked (padding) tokens: it divides by positions, not by loss tokens",
        "count only the loss mask's tokens (completion_mask · tool_mask) in the normaliser",
        "5",
        _normaliser_counts("padding"),
    ),
    Variant(
        "normaliser.counts_masked_tokens",
        "the normaliser counts tokens the loss mask excludes (tool output or truncated completions)",
        "count only the loss mask's tokens (completion_mask · tool_mask) in the normaliser",
        "5",
        _normaliser_counts("completion"),
    ),
    *(
        Variant(
            f"normaliser.aggregation_{mode}",
            f"the loss is aggregated as {_AGGREGATION_WORDS[mode]}, not as the loss type defines",
            "aggregate as the configured loss_type defines (see reference/grpo-algorithm.md §7)",
            "5",
            _aggregation(mode),
        )
        for mode in AGGREGATIONS
    ),
    Variant(
        "sign.advantages",
        "the advantages enter the loss with the wrong sign",
        "the per-token loss is −ρ·A (minimised): check the sign of the advantage term",
        "21",
        _negated_advantages,
    ),
    Variant(
        "sign.loss",
        "the loss has the wrong sign (the objective is maximised as a loss)",
        "return −objective as the loss",
        "21",
        _negated_loss,
    ),
    Variant(
        "grad.detached",
        "the loss does not depend on the log-probs it was given (a detach or a recomputation cuts the gradient)",
        "compute the loss from the log-probs tensor that requires grad; detach only the old and reference log-probs",
        None,
        _detached,
    ),
)


def variants_for(spec: GRPOSpec) -> list[Variant]:
    """The variants that apply to ``spec`` (in trial order)."""
    return [v for v in VARIANTS if v.applies(spec)]


def matching_variants(
    probe: ProbeBatch,
    spec: GRPOSpec,
    matches: Callable[[Outcome], bool],
) -> list[Variant]:
    """Every variant (in trial order) whose outcome on ``probe`` satisfies ``matches`` (the trainer's numbers)."""
    found = []
    for variant in variants_for(spec):
        try:
            outcome = variant.outcome(probe, spec)
        except Exception:  # a variant that cannot run on this probe names nothing
            continue
        if outcome is not None and matches(outcome):
            found.append(variant)
    return found


def consistent_choice(per_probe: dict[str, list[Variant]]) -> dict[str, Variant | None]:
    """One variant per failing probe: the variant that explains the most failing probes wins wherever it
    matches (two variants can coincide on one probe, e.g. N/P instead of N/P·K/S is a second division by K
    when S = K², but not on a probe with another K); ties go to the trial order."""
    order = {v.id: i for i, v in enumerate(VARIANTS)}
    counts: dict[str, int] = {}
    by_id: dict[str, Variant] = {}
    for found in per_probe.values():
        for variant in found:
            counts[variant.id] = counts.get(variant.id, 0) + 1
            by_id[variant.id] = variant
    ranked = sorted(counts, key=lambda i: (-counts[i], order[i]))
    out: dict[str, Variant | None] = {}
    for name, found in per_probe.items():
        ids = {v.id for v in found}
        out[name] = next((by_id[i] for i in ranked if i in ids), None)
    return out
