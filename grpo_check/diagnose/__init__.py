"""Signature detectors: a numerical signature of a failing comparison → the known bug it looks like.

``diagnose(step, reference, spec, findings)`` runs every detector on one step and returns diagnosis
findings (``kind="diagnosis"``, ``catalog_id`` naming the bug-catalog entry); the compare findings each
diagnosis explains get the same ``likely_cause``/``fix``/``catalog_id`` filled in (and a convention
difference turns their verdict into ``CONVENTION``). Detectors are written from the signatures of bug
*classes* (sign flips, per-group scale factors, normaliser factors, regrouping permutations, token shifts,
temperature, truncated support, KL-estimator and aggregation gradients, detached or unclipped gradients,
NaN leaks), never from one particular implementation.

Example::

    >>> from grpo_check.config import GRPOSpec
    >>> from grpo_check.compare.synthetic import make_step
    >>> from grpo_check.compare import compare_step
    >>> spec = GRPOSpec(num_generations=4, loss_type="grpo", gradient_accumulation_steps=4)
    >>> step = make_step(spec)
    >>> step.tensors["logps_grad"] = step["logps_grad"] * 4      # loss not divided by GAS
    >>> [f.catalog_id for f in compare_step(step, spec) if f.kind == "diagnosis"]
    ['4']
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from grpo_check._step_cache import step_cache
from grpo_check.config import GRPOSpec
from grpo_check.diagnose import (
    advantages,
    entropy,
    logps,
    loss_zero,
    nonfinite,
    objective,
    sampling,
    unexplained,
    variants,
)
from grpo_check.diagnose._context import Diagnosis, constant_factor, shared_comparisons
from grpo_check.findings import Finding, InputError
from grpo_check.stepref.forward import model_logits, model_logps, model_logps_shifted
from grpo_check.stepref.inputs import reference_downstream, step_context
from grpo_check.trace.model import TraceStep

Detector = Callable[[Diagnosis], list[Finding]]

# Order matters: upstream stages first, specific signatures before generic fallbacks.
DETECTORS: tuple[Detector, ...] = (
    nonfinite.detect_nan_leak,
    advantages.detect_grouping,
    advantages.detect_group_scale,
    advantages.detect_permuted,
    advantages.detect_batch_restandardised,
    entropy.detect_entropy_mask_pool,
    advantages.detect_group_sums,
    logps.detect_sign_flip,
    logps.detect_position_ids,
    logps.detect_forward_variant,
    logps.detect_token_shift,
    logps.detect_temperature,
    logps.detect_old_is_ref,
    logps.detect_old_logps_mismatch,
    logps.detect_ref_is_policy,
    sampling.detect_sampler_temperature,
    sampling.detect_truncated_support,
    sampling.detect_sampler_mismatch,
    nonfinite.detect_nan_origin,
    variants.detect_aggregation_variant,
    objective.detect_detached_grad,
    objective.detect_kl_estimator_values,
    objective.detect_clipping_not_applied,
    objective.detect_objective_variant,
    objective.detect_unnamed_factor,
    variants.detect_ratio_variant,
    loss_zero.detect_loss_near_zero,
    unexplained.detect_unexplained,
)

# The detectors that only explain a failing comparison: each returns nothing, and changes no finding, while no
# compare finding fails or warns (they read ``Diagnosis.failing`` first), so a step on which every comparison
# passed (most steps) skips them with the same findings. The others (NaN rewards, positive log-probs, a
# shifted token, the reference equal to the policy, a detached gradient, a zero loss) also speak on their own.
ON_FAILURE_ONLY: frozenset[Detector] = frozenset(
    {
        advantages.detect_grouping,
        advantages.detect_group_scale,
        advantages.detect_permuted,
        advantages.detect_batch_restandardised,
        entropy.detect_entropy_mask_pool,
        advantages.detect_group_sums,
        logps.detect_position_ids,
        logps.detect_forward_variant,
        logps.detect_old_is_ref,
        logps.detect_old_logps_mismatch,
        sampling.detect_sampler_temperature,
        sampling.detect_truncated_support,
        sampling.detect_sampler_mismatch,
        nonfinite.detect_nan_origin,
        variants.detect_aggregation_variant,
        objective.detect_kl_estimator_values,
        objective.detect_clipping_not_applied,
        objective.detect_objective_variant,
        objective.detect_unnamed_factor,
        variants.detect_ratio_variant,
        unexplained.detect_unexplained,
    }
)


def diagnose(
    step: TraceStep,
    reference: Any,
    spec: GRPOSpec,
    findings: list[Finding],
    *,
    model: Any = None,
    tolerances: Any = None,
) -> list[Finding]:
    """Run every signature detector on one step.

    Args:
        step: the trainer's captured step.
        reference: the stage reference (:class:`grpo_check.stepref.inputs.StageReference`) or a plain mapping
            of reference tensors by canonical name.
        spec: the algorithm configuration.
        findings: the compare findings of this step (explained findings are updated in place).
        model: the policy model, if available (enables temperature and truncated-support signatures).
    """
    tensors = dict(reference.tensors) if hasattr(reference, "tensors") else dict(reference or {})
    logits = getattr(reference, "logits", None)
    cache: dict[object, torch.Tensor | None] = {}

    def downstream(variant: GRPOSpec | None = None, **overrides: Any):
        try:
            return reference_downstream(step, variant or spec, **overrides)
        except InputError:
            return None

    def logps_at(temperature: float) -> torch.Tensor | None:
        if model is None:
            return None
        if temperature not in cache:
            cache[temperature] = model_logps(model, step, temperature)
        return cache[temperature]

    def shifted(shift: int) -> torch.Tensor | None:
        if model is None:
            return None
        key = ("shift", shift)
        if key not in cache:
            cache[key] = model_logps_shifted(model, step, spec.temperature, shift)
        return cache[key]

    def kept_mass() -> torch.Tensor | None:
        nonlocal logits
        if "kept_mass" in tensors:
            return tensors["kept_mass"]
        if logits is None and model is not None:  # the compare stage skips this forward when it needs no S_t
            logits = model_logits(model, step)
        if logits is None:
            return None
        from grpo_check.reference.logps import sampling_kept_mass

        return sampling_kept_mass(
            logits, step.get("completion_ids"), spec.temperature, spec.top_p, spec.top_k or 0, spec.min_p
        )

    dx = Diagnosis(
        step=step,
        spec=spec,
        reference=tensors,
        findings=findings,
        ctx=step_context(step, spec),
        downstream=downstream,
        model_logps=logps_at if model is not None else None,
        kept_mass=kept_mass,
        shifted_logps=shifted if model is not None else None,
    )
    out: list[Finding] = []
    detectors = DETECTORS if dx.failing() else _speaking_alone()
    with step_cache(step), shared_comparisons():  # joins compare_step's cache for this step, if open
        for detector in detectors:
            out.extend(detector(dx))
    return out


_SPEAKING_ALONE: tuple[tuple[Detector, ...], frozenset[Detector], tuple[Detector, ...]] | None = None


def _speaking_alone() -> tuple[Detector, ...]:
    """The detectors not in :data:`ON_FAILURE_ONLY`, in order (what runs while no comparison fails), worked
    out once per value of the two module attributes."""
    global _SPEAKING_ALONE
    memo = _SPEAKING_ALONE
    if memo is None or memo[0] is not DETECTORS or memo[1] is not ON_FAILURE_ONLY:
        quiet = ON_FAILURE_ONLY
        memo = _SPEAKING_ALONE = (DETECTORS, quiet, tuple(d for d in DETECTORS if d not in quiet))
    return memo[2]


__all__ = ["DETECTORS", "ON_FAILURE_ONLY", "Diagnosis", "constant_factor", "diagnose"]
