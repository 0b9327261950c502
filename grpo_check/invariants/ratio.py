"""Ratio-stage invariants: finite, ρ ≡ 1 on-policy, ρ moves off-policy, ρ = exp(Δlogp), clip masks, metrics."""

from __future__ import annotations

import math
from numbers import Real

import numpy as np
import torch

from grpo_check._step_cache import host_view
from grpo_check.config import GRPOSpec
from grpo_check.findings import Verdict
from grpo_check.invariants._common import (
    Outcome,
    any_true,
    argmax_2d,
    cached,
    count_true,
    f64,
    finite_outcome,
    fmt,
    inconclusive,
    malformed,
    masked_abs_max,
    not_applicable,
    passed,
    plain,
    rtol_atol,
    spec_or_default,
    token_mask,
    valid_finite,
    where_fill,
)
from grpo_check.invariants.registry import register
from grpo_check.trace.model import TraceStep

CLIP_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo")
SMALL_LOG_RATIO = 0.05
"""|log ρ| up to this (ρ within ~5%) on-policy is low-precision noise (a warning); above it, a real difference."""


@register(
    "ratio.finite",
    requires=[("ratio",), ("clipped_ratio",), ("sampler_is_ratio",)],
    description="ratio, clipped_ratio and sampler_is_ratio are finite on completion tokens",
    tolerance="exact",
    likely_cause="exp of a large log-ratio (old log-probs from a different model, or a -inf log-prob)",
    fix="check old_logps alignment with logps; compute the ratio as exp(logps − old_logps) in float32",
)
def ratio_finite(step: TraceStep, spec: GRPOSpec | None, *, tolerance: float | None = None) -> Outcome:
    return finite_outcome(step, ("ratio", "clipped_ratio", "sampler_is_ratio"))


def logps_minus_old(step: TraceStep) -> torch.Tensor:
    """``logps − old_logps`` in float64, shared between the checks of one step."""
    return cached(
        ("logps_minus_old", step["logps"], step["old_logps"]),
        lambda: f64(step["logps"]) - f64(step["old_logps"]),
    )


def log_ratio_for_clipping(step: TraceStep, spec: GRPOSpec | None) -> torch.Tensor | None:
    """log ρ as the objective uses it: (B, T) token level or (B, 1) sequence level (GSPO)."""
    level = spec_or_default(spec).importance_sampling_level
    return cached(("log_ratio_for_clipping", id(step), level), lambda: _log_ratio_for_clipping(step, spec))


def _log_ratio_for_clipping(step: TraceStep, spec: GRPOSpec | None) -> torch.Tensor | None:
    effective = spec_or_default(spec)
    if step.has("ratio"):
        return torch.log(f64(step["ratio"]))
    if step.has("logps", "old_logps"):
        log_ratio = logps_minus_old(step)
        if effective.importance_sampling_level == "sequence":
            mask = token_mask(step, log_ratio).double()
            return ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1)).unsqueeze(-1)
        return log_ratio
    steps_since = step.meta.get("optimizer_steps_since_old_logps")
    if step.has("logps") and not step.has("old_logps") and steps_since is not None and int(steps_since) == 0:
        # no optimizer step since the batch was generated and no old_logps: the trainer uses logps.detach().
        # Without that metadata, absent old_logps may just be uncaptured: ρ is unknown, never assumed 1.
        return torch.zeros_like(f64(step["logps"]))
    return None


def _on_policy_tolerance(step: TraceStep) -> float:
    reference = step.get("logps")
    if reference is None:
        reference = step["ratio"]
    rtol, atol = rtol_atol(reference.dtype)
    scale = 1.0
    if step.has("logps"):
        logps = f64(step["logps"])
        valid = valid_finite(step, logps)
        if any_true(valid):
            scale = max(1.0, masked_abs_max(logps, valid))
    return rtol * scale + atol


@register(
    "ratio.one_on_policy",
    requires=[("logps", "old_logps"), ("ratio",)],
    catalog_ids=("15", "16", "17"),
    description="ρ ≡ 1 (logps = old_logps) when no optimizer step happened since old log-probs were taken",
    tolerance="rtol·max(1, max|logp|) + atol of the logps dtype (torch.testing defaults); up to |log ρ| = 0.05 "
    "a warning (low-precision noise)",
    likely_cause="two forwards with the same weights disagree: dropout left on (model.train()), or "
    "batch-shape / precision non-invariance between the old and the new pass",
    fix="disable dropout for the policy forward (TRL sets dropout to 0), and compute old and new log-probs "
    "with the same micro-batching and dtype",
)
def one_on_policy(step: TraceStep, spec: GRPOSpec | None, *, tolerance: float | None = None) -> Outcome:
    steps_since = step.meta.get("optimizer_steps_since_old_logps")
    if step.has("logps", "old_logps"):
        if steps_since is None:
            return inconclusive("meta optimizer_steps_since_old_logps not recorded: cannot tell if on-policy")
        if int(steps_since) > 0:
            return not_applicable(f"{int(steps_since)} optimizer step(s) since the old log-probs")
        log_ratio = logps_minus_old(step)
    elif step.has("ratio"):
        # without the step metadata a recorded ratio ≠ 1 may be legitimately off-policy (old_logps simply not
        # captured): capturing less must never turn a correct step into a failure
        if steps_since is None:
            return inconclusive("meta optimizer_steps_since_old_logps not recorded: cannot tell if on-policy")
        if int(steps_since) > 0:
            return not_applicable(f"{int(steps_since)} optimizer step(s) since the old log-probs")
        log_ratio = torch.log(f64(step["ratio"]))
    else:
        return inconclusive("needs logps + old_logps, or ratio")
    if log_ratio.dim() == 2 and log_ratio.shape[1] > 1:
        valid = token_mask(step, log_ratio)
    else:
        valid = torch.ones_like(log_ratio, dtype=torch.bool)
    if not any_true(valid):
        return inconclusive("no valid token")
    allowed = tolerance if tolerance is not None else _on_policy_tolerance(step)
    deviation = where_fill(valid, torch.nan_to_num(log_ratio.abs(), nan=torch.inf), -1.0)
    row, token = argmax_2d(deviation)
    figure = float(deviation[row] if token is None else deviation[row, token])
    if figure <= allowed:
        return passed(f"on-policy: max |log ρ| = {fmt(figure)}", figure, allowed)
    off = int(((deviation > allowed) & valid).sum())
    small = figure <= SMALL_LOG_RATIO and tolerance is None
    return Outcome(
        Verdict.WARN if small else Verdict.FAIL,
        f"ρ ≠ 1 before any optimizer step: max |logp − old_logp| = {fmt(figure)} "
        f"(ρ = {fmt(math.exp(min(figure, 700)))}) on {off} token(s)"
        + (" — small: rounding noise of a low-precision forward" if small else ""),
        figure=figure,
        tolerance=allowed,
        row=row,
        token=token,
        details={"tokens_off": off},
        catalog_id="16" if small else "15",
        likely_cause="batch-shape / precision non-invariance: old and new log-probs computed with a different "
        "micro-batching or dtype (bf16 matmuls are not batch-invariant)"
        if small
        else None,
        fix="compute old and new log-probs with the same micro-batch size and dtype (or in float32)"
        if small
        else None,
    )


@register(
    "ratio.moves_off_policy",
    requires=("logps", "old_logps", "meta.optimizer_steps_since_old_logps"),
    catalog_ids=("17",),
    description="after an optimizer step, logps differ from old_logps somewhere (otherwise clipping is inert)",
    tolerance="exact equality on every token is flagged",
    likely_cause="old log-probs captured at the wrong time (recomputed after the update, or aliased to "
    "logps.detach()): ρ ≡ 1 so clipping is silently inactive",
    fix="compute old_logps once, at generation time, before any optimizer step on that batch",
)
def moves_off_policy(step: TraceStep, spec: GRPOSpec | None, *, tolerance: float | None = None) -> Outcome:
    steps_since = int(step.meta["optimizer_steps_since_old_logps"])
    if steps_since == 0:
        return not_applicable("no optimizer step since the old log-probs")
    if step.meta.get("policy_changed_since_generation") is False:
        return not_applicable(
            "the optimizer steps since the old log-probs changed no parameter (a zero update)"
        )
    logps, old = plain(step["logps"]), plain(step["old_logps"])
    valid = token_mask(step, logps)
    if not any_true(valid):
        return inconclusive("no valid token")
    differ = (logps != old) & valid
    moved = count_true(differ)  # count_nonzero: cheaper than any() at every size, and the count is reported
    if moved:
        return passed(f"{moved} token(s) moved after {steps_since} optimizer step(s)", float(moved), 0.0)
    return Outcome(
        Verdict.WARN,
        f"logps are bitwise equal to old_logps on all {int(valid.sum())} tokens although {steps_since} "
        "optimizer step(s) happened (legitimate only with learning rate 0)",
        figure=0.0,
        tolerance=0.0,
    )


@register(
    "ratio.matches_logps",
    requires=("ratio", "logps", "old_logps"),
    description="ratio = exp(logps − old_logps) per token (exp of the masked mean for sequence-level GSPO)",
    tolerance="(rtol of ratio + rtol of logps·max|logp|)·ρ + atol (torch.testing defaults per dtype)",
    likely_cause="ratio built from different tensors than the loss uses (e.g. sampler log-probs, an "
    "unshifted or differently masked log-prob), or the wrong level (token vs sequence)",
    fix="ratio = exp(logps − old_logps) with both aligned to completion_ids; sequence level: exp of the "
    "masked mean of the log-ratio",
)
def matches_logps(step: TraceStep, spec: GRPOSpec | None, *, tolerance: float | None = None) -> Outcome:
    ratio = f64(step["ratio"])
    log_ratio = logps_minus_old(step)
    mask = token_mask(step, log_ratio)
    if ratio.dim() == 2 and ratio.shape[1] == 1 and log_ratio.shape[1] > 1:
        weights = mask.double()
        expected = torch.exp(
            (log_ratio * weights).sum(-1, keepdim=True) / weights.sum(-1, keepdim=True).clamp(min=1)
        )
        valid = mask.any(-1, keepdim=True)
    else:
        expected = cached(("exp", log_ratio), lambda: torch.exp(log_ratio))
        valid = mask
    if expected.shape != ratio.shape:
        return malformed(f"ratio shape {tuple(ratio.shape)} does not match logps {tuple(log_ratio.shape)}")
    rtol_ratio, atol = rtol_atol(step["ratio"].dtype)
    rtol_logps, _ = rtol_atol(step["logps"].dtype)
    logp_scale = masked_abs_max(f64(step["logps"]), mask) if any_true(mask) else 1.0
    if tolerance is None:
        outcome = _matches_logps_host(
            ratio, expected, valid, rtol_ratio + rtol_logps * max(1.0, logp_scale), atol
        )
        if outcome is not None:
            return outcome
    allowed = (
        torch.full_like(expected, tolerance)
        if tolerance is not None
        else (rtol_ratio + rtol_logps * max(1.0, logp_scale)) * expected + atol  # exp(·) ≥ 0: |exp| = exp
    )
    error = (ratio - expected).abs()
    excess = where_fill(valid, torch.nan_to_num(error - allowed, nan=torch.inf), -torch.inf)
    row, token = argmax_2d(excess)
    pick = (row,) if token is None else (row, token)
    if float(excess[pick]) <= 0:
        return passed(
            "ratio = exp(logps − old_logps)",
            float(where_fill(valid, error, 0.0).max()),
            float(allowed[pick]),
        )
    return Outcome(
        Verdict.FAIL,
        f"ratio {fmt(float(ratio[pick]))} ≠ exp(logps − old_logps) = {fmt(float(expected[pick]))} on "
        f"{int((excess > 0).sum())} position(s)",
        figure=float(error[pick]),
        tolerance=float(allowed[pick]),
        row=row,
        token=token if ratio.shape[-1] > 1 else None,
    )


# inf − inf: NaN without a warning, as in torch (np.errstate as a decorator: no context-manager object per call)
@np.errstate(all="ignore")
def _matches_logps_host(
    ratio: torch.Tensor, expected: torch.Tensor, valid: torch.Tensor, relative: float, atol: float
) -> Outcome | None:
    """matches_logps' pass on a small CPU step at the default tolerance, in numpy: the same element-wise
    operations, maximum and first position of the maximum; ``None``: not decided here (a failure, a NaN,
    no numpy view), the torch path judges."""
    recorded, wanted, keep = host_view(ratio), host_view(expected), host_view(valid)
    if recorded is None or wanted is None or keep is None or recorded.ndim != 2 or recorded.size == 0:
        return None
    allowed = relative * wanted + atol
    error = np.abs(recorded - wanted)
    # error − allowed is finite, +inf or NaN (never −inf: allowed is inf only where error is inf or NaN):
    # where it is ≤ 0 at every valid position, the torch path's nan_to_num changes nothing it reads
    excess = np.where(keep, error - allowed, -np.inf)
    row, token = divmod(int(excess.argmax()), excess.shape[1])
    if not excess[row, token] <= 0:
        return None
    # max |error| at valid positions, 0 (the fill) where there are none: where-then-max in one reduction (no
    # NaN there: its excess would be NaN, and the argmax above finds a NaN first)
    figure = float(_maximum_reduce(error, axis=None, initial=0.0, where=keep))
    return passed("ratio = exp(logps − old_logps)", figure, float(allowed[row, token]))


_maximum_reduce = np.maximum.reduce


def _broadcast_advantages(step: TraceStep, like: torch.Tensor) -> torch.Tensor:
    advantages = f64(step["advantages"])
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)
    return advantages.expand(like.shape) if advantages.shape[-1] == 1 else advantages


@register(
    "ratio.clip_masks_consistent",
    requires=[
        ("is_low_clipped", "advantages", "ratio"),
        ("is_high_clipped", "advantages", "ratio"),
        ("is_low_clipped", "advantages", "logps", "old_logps"),
        ("is_high_clipped", "advantages", "logps", "old_logps"),
    ],
    catalog_ids=("22",),
    description="is_low_clipped = (ρ < 1−ε_low) ∧ (A < 0) and is_high_clipped = (ρ > 1+ε_high) ∧ (A > 0)",
    tolerance="tokens within rtol of a clip boundary are skipped",
    likely_cause="clip metrics defined wrongly (ignore the advantage sign, wrong epsilon, or a clip-higher "
    "epsilon computed but not used)",
    fix="count a token as clipped only where the clipped branch of min(ρA, clip(ρ)A) is active",
)
def clip_masks_consistent(
    step: TraceStep, spec: GRPOSpec | None, *, tolerance: float | None = None
) -> Outcome:
    effective = spec_or_default(spec)
    if effective.loss_type not in CLIP_LOSS_TYPES:
        return inconclusive(f"loss_type {effective.loss_type!r} has no PPO clip region")
    log_ratio = log_ratio_for_clipping(step, spec)
    if log_ratio is None:
        return inconclusive("ratio not available")
    ratio = torch.exp(log_ratio)
    reference_mask = step.get("is_low_clipped")
    if reference_mask is None:
        reference_mask = step["is_high_clipped"]
    shape = reference_mask.shape
    ratio = ratio.expand(shape) if ratio.shape[-1] == 1 else ratio
    advantages = _broadcast_advantages(step, ratio)
    rtol, atol = rtol_atol(torch.float32)
    margin = tolerance if tolerance is not None else 64 * rtol + atol
    low_bound, high_bound = 1 - effective.epsilon_low, 1 + effective.epsilon_high_effective
    decidable = ((ratio - low_bound).abs() > margin) & ((ratio - high_bound).abs() > margin)
    valid = token_mask(step, ratio) & decidable if shape[-1] > 1 else decidable
    mismatch = torch.zeros(shape, dtype=torch.bool, device=ratio.device)
    names = []
    for name, expected in (
        ("is_low_clipped", (ratio < low_bound) & (advantages < 0)),
        ("is_high_clipped", (ratio > high_bound) & (advantages > 0)),
    ):
        if step.has(name):
            names.append(name)
            mismatch |= (plain(step[name]).bool() != expected) & valid
    if not count_true(mismatch):
        return passed(f"{', '.join(names)} match ρ, A and ε", 0.0, 0.0)
    row, token = argmax_2d(mismatch.to(torch.int8))
    return Outcome(
        Verdict.FAIL,
        f"{int(mismatch.sum())} token(s) where {' / '.join(names)} disagree with ρ, A and "
        f"ε = ({effective.epsilon_low:g}, {effective.epsilon_high_effective:g}) "
        f"(row {row}: ρ = {fmt(float(ratio[row, token]))}, A = {fmt(float(advantages[row, token]))})",
        figure=float(mismatch.sum()),
        tolerance=0.0,
        row=row,
        token=token,
    )


def _clip_metrics(meta: dict) -> dict[str, float]:
    found: dict[str, float] = {}
    sources = [meta]
    if isinstance(meta.get("metrics"), dict):
        sources.append(meta["metrics"])
    for source in sources:
        for key, value in source.items():
            lowered = str(key).lower()
            if ("clip_ratio" in lowered or "clip_frac" in lowered or "clipfrac" in lowered) and isinstance(
                value, Real | torch.Tensor
            ):
                found[str(key)] = float(value)
    return found


@register(
    "ratio.clip_metrics_in_unit_interval",
    requires=(),
    catalog_ids=("22",),
    description="logged clip-fraction metrics (meta keys or meta['metrics'] with clip_ratio / clip_frac) are in [0, 1]",
    tolerance="exact",
    likely_cause="clip fraction normalised by the wrong count (sum over tokens divided by rows, or not masked)",
    fix="clip fraction = Σ(clipped·mask) / Σ mask",
)
def clip_metrics_in_unit_interval(
    step: TraceStep, spec: GRPOSpec | None, *, tolerance: float | None = None
) -> Outcome:
    metrics = _clip_metrics(step.meta)
    if not metrics:
        return Outcome(Verdict.NOT_CAPTURED, "not captured: no clip_ratio / clip_frac metric in step meta")
    outside = {k: v for k, v in metrics.items() if not (0.0 <= v <= 1.0) and not math.isnan(v)}
    if not outside:
        return passed(f"{len(metrics)} clip metric(s) within [0, 1]", max(metrics.values()), 1.0)
    key, value = max(outside.items(), key=lambda kv: abs(kv[1] - 0.5))
    return Outcome(
        Verdict.FAIL,
        f"clip metric {key} = {fmt(value)} is outside [0, 1]",
        figure=value,
        tolerance=1.0,
        details={"outside": outside},
    )
