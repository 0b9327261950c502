"""Gradient-stage invariants on ∂loss/∂logps (``logps_grad``): the per-token weight the trainer applies.

Loss values cannot show a detached term, a flipped sign or clipping that is computed but not applied; the
gradient can: unclipped tokens must be pushed in the direction of their advantage (∂L/∂logp_t has the sign
of −A), and tokens in the clip region must receive exactly no policy gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from grpo_check._step_cache import host_view
from grpo_check.config import GRPOSpec
from grpo_check.findings import Verdict
from grpo_check.invariants._common import (
    Outcome,
    _count_nonzero,
    argmax_2d,
    cached,
    count_true,
    f64,
    finite_mask,
    finite_outcome,
    fmt,
    inconclusive,
    known_finite,
    loss_mask,
    malformed,
    not_applicable,
    passed,
    plain,
    rtol_atol,
    scalar_like,
    spec_or_default,
    token_mask,
    where_fill,
)
from grpo_check.invariants.kl import kl_estimator, policy_ref_exp, policy_ref_gap
from grpo_check.invariants.ratio import CLIP_LOSS_TYPES, log_ratio_for_clipping
from grpo_check.invariants.registry import register
from grpo_check.trace.model import TraceStep

_SIGN_LOSS_TYPES = (*CLIP_LOSS_TYPES, "cispo", "sapo")
_maximum_reduce = np.maximum.reduce
_BOUNDARY_MARGIN = 1e-4  # relative distance to a clip boundary below which a token is not judged
_KL_DOMINANCE = 2.0  # the policy term must exceed the largest possible KL term by this factor


@register(
    "grad.finite",
    requires=("logps_grad",),
    description="∂loss/∂logps is finite on completion tokens",
    tolerance="exact",
    likely_cause="a non-finite value upstream (advantage, ratio, KL) or 0/0 in the loss normaliser",
    fix="fix the first non-finite upstream tensor; clamp normalisers with .clamp(min=1)",
)
def grad_finite(step: TraceStep, spec: GRPOSpec | None, *, tolerance: float | None = None) -> Outcome:
    return finite_outcome(step, ("logps_grad",))


@register(
    "grad.zero_outside_loss_mask",
    requires=("logps_grad", "completion_mask"),
    catalog_ids=("28", "11"),
    description="∂loss/∂logp_t = 0 wherever the loss mask (completion_mask ∧ tool_mask ∧ ¬truncated) is 0",
    tolerance="exact 0",
    likely_cause="tokens the policy did not generate (tool output, padding, tokens after EOS) are trained on",
    fix="multiply the per-token loss by completion_mask * tool_mask (and zero truncated rows when "
    "mask_truncated_completions) before aggregating",
)
def zero_outside_loss_mask(
    step: TraceStep, spec: GRPOSpec | None, *, tolerance: float | None = None
) -> Outcome:
    logps_grad = step["logps_grad"]
    mask = loss_mask(step, spec)
    if mask is None or mask.shape != logps_grad.shape:
        return inconclusive(f"loss mask shape does not match logps_grad {tuple(logps_grad.shape)}")
    allowed = tolerance if tolerance is not None else 0.0
    if known_finite(step, "logps_grad"):
        outcome = _zero_outside_host(_host_grad(logps_grad), mask, allowed)
        if outcome is not None:
            return outcome
    grad = f64(logps_grad)
    masked_out = ~mask
    # non-finite gradients are grad.finite's to report (NaN · 0 stays NaN at padding)
    judged = masked_out if known_finite(step, "logps_grad") else masked_out & finite_mask(grad)
    outside = where_fill(judged, grad.abs(), -1.0)
    figure = float(outside.max())  # the value at argmax_2d(outside); the position is only needed on failure
    if figure <= allowed:
        return passed(
            f"no gradient on {count_true(masked_out)} masked-out position(s)", max(figure, 0.0), allowed
        )
    row, token = argmax_2d(outside)
    leaking = (outside > allowed) & ~mask
    in_completion = plain(step["completion_mask"]).bool()
    tool_tokens = int((leaking & in_completion).sum())
    if tool_tokens:
        what, catalog = f"{tool_tokens} non-policy (tool_mask = 0 or truncated) token(s)", "28"
    else:
        what, catalog = f"{int(leaking.sum())} padding / after-EOS position(s)", "11"
    return Outcome(
        Verdict.FAIL,
        f"gradient flows into {what}: max |∂L/∂logp| = {fmt(figure)} outside the loss mask",
        figure=figure,
        tolerance=allowed,
        row=row,
        token=token,
        catalog_id=catalog,
    )


def _host_grad(logps_grad: torch.Tensor) -> torch.Tensor:
    """``logps_grad`` as the host paths read it: a float32/float64 gradient in its own dtype (their |·|,
    comparisons, maxima and float64 products with A or a KL slope are exact: the float64 copy's numbers, no
    copy made), any other dtype as the float64 copy."""
    if logps_grad.dtype is torch.float32 or logps_grad.dtype is torch.float64:
        return plain(logps_grad)
    return f64(logps_grad)


def _host_pair(grad: torch.Tensor, mask: torch.Tensor) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(host_view(grad), host_view(mask)), shared between the checks of one step: a numpy view of a tensor
    dispatches four no-op operations (detach, to, resolve_conj, resolve_neg), a cache hit none."""
    return cached(("host_pair", grad, mask), lambda: (host_view(grad), host_view(mask)))


def _zero_outside_host(grad: torch.Tensor, mask: torch.Tensor, allowed: float) -> Outcome | None:
    """zero_outside_loss_mask's pass on a small CPU step with a finite gradient, in numpy (the same
    comparisons and maximum); ``None``: not decided here (a failure, or no numpy view), the torch path judges."""
    values, keep = _host_pair(grad, mask)
    if values is None or keep is None or values.size == 0:
        return None
    masked_out = ~keep
    # the largest |value| at masked-out positions, −1 (the fill) when there are none: the same maximum as
    # where-then-max (|value| ≥ 0 > −1 and no NaN: the gradient is known finite), in one reduction
    figure = float(_maximum_reduce(np.abs(values), axis=None, initial=-1.0, where=masked_out))
    if figure > allowed:
        return None
    count = int(_count_nonzero(masked_out))
    return passed(f"no gradient on {count} masked-out position(s)", max(figure, 0.0), allowed)


def _ratio(step: TraceStep, spec: GRPOSpec | None, like: torch.Tensor) -> torch.Tensor | None:
    """ρ broadcast to ``like``'s shape (shared between the checks of one step: never modify it in place)."""
    level = spec_or_default(spec).importance_sampling_level
    return cached(
        ("clip_ratio", id(step), level, like.shape, like.device),  # (a Size is a tuple; a device hashes)
        lambda: _ratio_of(step, spec, like),
    )


def _ratio_of(step: TraceStep, spec: GRPOSpec | None, like: torch.Tensor) -> torch.Tensor | None:
    shape = like.shape
    log_ratio = log_ratio_for_clipping(step, spec)
    if log_ratio is None:
        steps_since = step.meta.get("optimizer_steps_since_old_logps")
        if steps_since is not None and int(steps_since) == 0:
            return torch.ones(shape, dtype=torch.float64, device=like.device)
        return None
    ratio = torch.exp(log_ratio)
    return ratio.expand(shape) if ratio.shape[-1] == 1 else ratio


def _advantages(step: TraceStep, shape: torch.Size) -> torch.Tensor:
    """float64 advantages broadcast to ``shape`` (one object per step, so results keyed on it are shared)."""
    return cached(("advantages_as", step["advantages"], tuple(shape)), lambda: _advantages_as(step, shape))


def _advantages_as(step: TraceStep, shape: torch.Size) -> torch.Tensor:
    advantages = _compact_advantages(step)
    return advantages.expand(shape) if advantages.shape[-1] == 1 else advantages


def _compact_advantages(step: TraceStep) -> torch.Tensor:
    """float64 advantages as (B, 1) (or (B, T) when token level): broadcasting them gives ``_advantages``."""
    advantages = f64(step["advantages"])
    return advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages


def _clip_region(
    ratio: torch.Tensor, advantages: torch.Tensor, spec: GRPOSpec
) -> tuple[torch.Tensor, torch.Tensor]:
    """(zero-gradient region, near-boundary tokens) of the clipped surrogate for the clip loss types.

    Shared between the checks of one step: never modify the masks in place.
    """
    bounds = (spec.epsilon_low, spec.epsilon_high_effective, spec.delta, spec.dual_clip)
    return cached(
        ("clip_region", ratio, advantages, bounds), lambda: _clip_region_of(ratio, advantages, spec)
    )


# what _region_and_near takes: the torch path's tensors, the host path's numpy views
TensorOrArray = torch.Tensor | np.ndarray


def _row_view(advantages: torch.Tensor) -> torch.Tensor:
    """(B, 1) view of advantages broadcast along the tokens (stride 0), else the tensor itself.

    Element-wise results broadcast from it are the same values, computed once per row instead of per token.
    """
    if advantages.dim() == 2 and advantages.shape[-1] > 1 and advantages.stride(-1) == 0:
        return advantages[:, :1]
    return advantages


def _region_and_near(
    ratio: TensorOrArray, advantages: TensorOrArray, spec: GRPOSpec, number: Callable[[float, Any], Any]
) -> tuple[TensorOrArray, TensorOrArray]:
    """(zero-gradient clip region, ρ near a clip boundary) of tensors or of numpy arrays alike; ``number(x,
    like)`` is the operand a Python number ``x`` becomes next to ``like`` (:func:`scalar_like` for tensors,
    the number itself for float64 arrays: the same comparisons either way)."""
    low, high = 1 - spec.epsilon_low, 1 + spec.epsilon_high_effective
    zero = number(0.0, advantages)
    region = ((advantages > zero) & (ratio > number(high, ratio))) | (
        (advantages < zero) & (ratio < number(low, ratio))
    )
    boundaries = [low, high]
    if spec.delta is not None:
        region = region | (ratio > spec.delta)
        boundaries.append(spec.delta)
    if spec.dual_clip is not None:
        region = region | ((advantages < 0.0) & (ratio > spec.dual_clip))
        boundaries.append(spec.dual_clip)
    near = abs(ratio - number(low, ratio)) <= number(_BOUNDARY_MARGIN * low, ratio)
    for boundary in boundaries[1:]:
        near = near | (abs(ratio - number(boundary, ratio)) <= number(_BOUNDARY_MARGIN * boundary, ratio))
    return region, near


def _as_is(number: float, like: Any) -> float:
    """A Python number next to a numpy array: as it is."""
    return number


def _clip_region_of(
    ratio: torch.Tensor, advantages: torch.Tensor, spec: GRPOSpec
) -> tuple[torch.Tensor, torch.Tensor]:
    # numbers as 0-dim operands of the tensors' dtype (scalar_like): the same masks, cheaper on small steps
    region, near = _region_and_near(ratio, _row_view(advantages), spec, scalar_like)
    return region, near if near.shape == region.shape else near.expand(region.shape)


def _policy_scale(
    spec: GRPOSpec, ratio: torch.Tensor, advantages: torch.Tensor
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """(|∂policy term/∂logp_t| up to the shared normaliser or None if unknown, zero-gradient clip region,
    tokens too near a clip boundary to judge)."""
    if spec.loss_type in CLIP_LOSS_TYPES:
        region, near = _clip_region(ratio, advantages, spec)
        scale = cached(("abs_times", advantages, ratio), lambda: _row_view(advantages).abs() * ratio)
        return scale, region, near
    none = torch.zeros_like(advantages, dtype=torch.bool)
    if spec.loss_type == "cispo":
        return advantages.abs() * ratio.clamp(max=spec.epsilon_high_effective), none, none
    if spec.loss_type == "sapo":  # −A·σ(τ(ρ−1))·4/τ has slope |A|·4·σ'(τ(ρ−1))·ρ
        temperature = torch.where(
            advantages > 0,
            torch.full_like(advantages, spec.sapo_temperature_pos),
            torch.full_like(advantages, spec.sapo_temperature_neg),
        )
        gate = torch.sigmoid(temperature * (ratio - 1))
        return advantages.abs() * 4 * gate * (1 - gate) * ratio, none, none
    return None, none, none


def _masked_tokens_allowed(spec: GRPOSpec) -> bool:
    """Whether the objective may zero the gradient of some unclipped tokens on purpose."""
    return (
        spec.top_entropy_quantile < 1.0
        or spec.off_policy_mask_threshold is not None
        or (spec.sampler_is_correction and spec.sampler_is_mode.endswith("mask"))
    )


def _kl_gradient_bound(step: TraceStep, spec: GRPOSpec, ratio: torch.Tensor) -> torch.Tensor | None:
    """Upper bound on |∂(β·KL_t)/∂logp_t| per token (before the shared normaliser), or None if unknown."""
    if not step.has("logps", "ref_logps"):
        return None
    estimator = kl_estimator(step, spec)
    if not spec.use_bias_correction_kl:
        return _beta_abs_slope(step, estimator, spec.beta)
    value, slope = _kl_value(step, estimator), _abs_slope(step, estimator)
    if spec.importance_sampling_level == "sequence":  # ∂(Σ_s ρ·k_s)/∂logp_t = ρ·(k'_t + mean_s k_s)
        bound = ratio * (slope + _row_mean(step, value.abs()))
    else:  # ∂(ρ_t·k_t)/∂logp_t = ρ_t·(k_t + k'_t)
        bound = ratio * (value.abs() + slope)
    return spec.beta * bound


# numpy on host views for small CPU steps: the pass (and the vacuous outcomes) of the sign checks with the
# same element-wise IEEE operations, comparisons and counts as their torch paths (exp stays torch's; sums,
# the sequence-level means, are not taken here). Anything else returns None: the torch path judges.


def _host_clip_terms(
    step: TraceStep, spec: GRPOSpec, ratio: torch.Tensor
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """(A as (B, 1) or (B, T), ρ, zero-gradient clip region, near a clip boundary, |A|·ρ) as numpy arrays,
    for the clip loss types (as :func:`_clip_region_of` and :func:`_policy_scale`), shared between the
    checks of one step; ``None`` without numpy views."""
    bounds = (spec.epsilon_low, spec.epsilon_high_effective, spec.delta, spec.dual_clip)
    return cached(
        ("host_clip_terms", ratio, step["advantages"], bounds), lambda: _host_clip_terms_of(step, spec, ratio)
    )


def _host_clip_terms_of(
    step: TraceStep, spec: GRPOSpec, ratio: torch.Tensor
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    advantages, rho = host_view(f64(step["advantages"])), host_view(ratio)
    if advantages is None or rho is None or rho.ndim != 2:
        return None
    if advantages.ndim == 1:
        advantages = advantages[:, None]
    if (
        advantages.ndim != 2
        or advantages.shape[0] != rho.shape[0]
        or advantages.shape[1] not in (1, rho.shape[1])
    ):
        return None
    region, near = _region_and_near(rho, advantages, spec, _as_is)
    return advantages, rho, region, near, np.abs(advantages) * rho


def _host_kl_terms(step: TraceStep, estimator: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(k_t, ∂k_t/∂logp_t, |∂k_t/∂logp_t|) as numpy arrays (as :func:`_kl_value`, :func:`_k3_slope` /
    :func:`_kl_gradient_direction`'s slope and :func:`_abs_slope`), shared between the checks of one step;
    ``None`` without numpy views."""
    return cached(
        ("host_kl_terms", step["ref_logps"], step["logps"], estimator),
        lambda: _host_kl_terms_of(step, estimator),
    )


def _host_kl_terms_of(step: TraceStep, estimator: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    gap = policy_ref_gap(step)
    x = host_view(gap)
    if x is None:
        return None
    if estimator == "k1":
        ones = np.ones_like(x)
        return -x, ones, ones
    if estimator == "k2":
        return 0.5 * (x * x), -x, np.abs(x)
    exp = host_view(policy_ref_exp(step))  # exp(x): torch's (numpy's exp may differ in the last bit)
    if exp is None:
        return None
    slope = 1.0 - exp
    return exp - x - 1.0, slope, np.abs(slope)


def _kl_gradient_bound_host(step: TraceStep, spec: GRPOSpec, rho: np.ndarray) -> np.ndarray | None:
    """:func:`_kl_gradient_bound` in numpy (``None``: unknown, or the sequence-level mean it needs)."""
    if not step.has("logps", "ref_logps"):
        return None
    terms = _host_kl_terms(step, kl_estimator(step, spec))
    if terms is None:
        return None
    value, _, abs_slope = terms
    if not spec.use_bias_correction_kl:
        return spec.beta * abs_slope
    if spec.importance_sampling_level == "sequence":
        return None
    return spec.beta * (rho * (np.abs(value) + abs_slope))


def _sampler_positive_host(step: TraceStep, shape: tuple[int, ...]) -> np.ndarray | None:
    """``sampler_is_ratio > 0`` as a numpy mask broadcastable to ``shape`` (``None``: no view, odd shape)."""
    sampler = host_view(f64(step["sampler_is_ratio"]))
    if sampler is None or sampler.shape not in (shape, (shape[0], 1)):
        return None
    return sampler > 0.0


# 0·inf, inf − inf: NaN without a warning, as in torch (np.errstate as a decorator: no context-manager object
# per call)
_quiet = np.errstate(all="ignore")


@_quiet
def _sign_matches_host(
    step: TraceStep, spec: GRPOSpec, grad: torch.Tensor, ratio: torch.Tensor, mask: torch.Tensor, atol: float
) -> Outcome | None:
    """sign_matches_advantage's pass or inconclusive outcome on a small CPU step of a clip loss type with
    finite advantages and gradient; ``None``: not decided here."""
    terms = _host_clip_terms(step, spec, ratio)
    values, keep = _host_pair(grad, mask)
    if terms is None or values is None or keep is None or values.size == 0 or keep.shape != values.shape:
        return None
    advantages, rho, region, near, policy_scale = terms
    if rho.shape != values.shape:
        return None
    decidable = keep & (np.abs(advantages) > atol) & ~(region | near)
    if step.has("sampler_is_ratio"):
        sampler_positive = _sampler_positive_host(step, values.shape)
        if sampler_positive is None:
            return None
        decidable &= sampler_positive
    if spec.beta != 0:
        if _masked_tokens_allowed(spec):
            return None
        kl_bound = _kl_gradient_bound_host(step, spec, rho)
        if kl_bound is None:
            return None
        decidable &= policy_scale > _KL_DOMINANCE * kl_bound
    count = int(_count_nonzero(decidable))
    if count == 0:
        return inconclusive("no token where the policy term alone decides the gradient sign")
    if step.has("completion_mask"):
        # a product of the sign of A, or a zero gradient (its product is ±0), in one test: ≥ 0 (finite
        # factors: no NaN). A product that underflows to ±0 is sent to the torch path too, which judges it
        if _count_nonzero(decidable & (values * advantages >= 0.0)):
            return None
    elif _count_nonzero(decidable & (values * advantages > 0.0)):
        return None
    return passed(f"{count} unclipped token(s): sign(∂L/∂logp) = −sign(A)", 0.0, 0.0, decidable_tokens=count)


@_quiet
def _kl_sign_host(
    step: TraceStep, spec: GRPOSpec, grad: torch.Tensor, ratio: torch.Tensor, mask: torch.Tensor, floor: float
) -> Outcome | None:
    """kl_sign_where_kl_dominates' pass or not-applicable outcome on a small CPU step of a clip loss type
    with a known ratio and a finite gradient; ``None``: not decided here."""
    if not step.has("logps", "ref_logps"):
        return None
    clip_terms = _host_clip_terms(step, spec, ratio)
    kl_terms = _host_kl_terms(step, kl_estimator(step, spec))
    values, keep = _host_pair(grad, mask)
    if clip_terms is None or kl_terms is None or values is None or keep is None or values.size == 0:
        return None
    advantages, rho, region, near, policy_scale = clip_terms
    value, slope, abs_slope = kl_terms
    if rho.shape != values.shape or keep.shape != values.shape or slope.shape != values.shape:
        return None
    unweighted = not spec.use_bias_correction_kl
    if unweighted:
        direction = slope
    elif spec.importance_sampling_level == "sequence":
        return None
    else:
        direction = value + slope
    if unweighted and spec.beta > 0:
        kl_gradient_abs = spec.beta * abs_slope
    else:
        kl_gradient = spec.beta * direction
        if not unweighted:
            kl_gradient = kl_gradient * rho
        kl_gradient_abs = np.abs(kl_gradient)
    dominated = (advantages == 0.0) | region | (kl_gradient_abs > _KL_DOMINANCE * policy_scale)
    direction_abs = abs_slope if unweighted else np.abs(direction)
    judged = keep & dominated & ~near & (direction_abs > floor) & (values != 0.0)
    count = int(_count_nonzero(judged))
    if count == 0:
        return not_applicable("no token where the KL penalty alone decides the gradient")
    if _count_nonzero(judged & (values * direction < 0.0)):
        return None
    return passed(f"{count} KL-dominated token(s) move towards the reference", 0.0, 0.0, judged_tokens=count)


@register(
    "grad.sign_matches_advantage",
    requires=("logps_grad", "advantages"),
    catalog_ids=("21",),
    description="on unclipped tokens, sign(∂L/∂logp_t) = −sign(A) (the update raises log-probs of A > 0)",
    tolerance="exact sign; tokens within 1e-4 of a clip boundary, or where β·|∂KL| could rival |A|·ρ, skipped",
    likely_cause="loss sign flipped (maximising the loss), or advantages mis-signed in the objective",
    fix="loss = −min(ρ·A, clip(ρ)·A) (+ β·KL); minimise it",
)
def sign_matches_advantage(
    step: TraceStep, spec: GRPOSpec | None, *, tolerance: float | None = None
) -> Outcome:
    effective = spec_or_default(spec)
    if effective.loss_type not in _SIGN_LOSS_TYPES:
        return inconclusive(f"loss_type {effective.loss_type!r}: per-token gradient sign not fixed by A")
    if effective.entropy_coef != 0:
        return inconclusive("entropy bonus adds a gradient of either sign (entropy_coef ≠ 0)")
    logps_grad = step["logps_grad"]
    if logps_grad.dim() != 2:
        return malformed(f"logps_grad must be (B, T), got {tuple(logps_grad.shape)}")
    ratio = _ratio(step, spec, logps_grad)  # (its shape and device)
    if ratio is None:
        return inconclusive(
            "ratio unknown (needs ratio, logps + old_logps, or meta optimizer_steps_since_old_logps = 0)"
        )
    mask = loss_mask(step, spec)
    mask = token_mask(step, logps_grad) if mask is None or mask.shape != logps_grad.shape else mask
    _, atol = rtol_atol(step["advantages"].dtype)
    if effective.loss_type in CLIP_LOSS_TYPES and known_finite(step, "advantages", "logps_grad"):
        outcome = _sign_matches_host(step, effective, _host_grad(logps_grad), ratio, mask, atol)
        if outcome is not None:
            return outcome
    grad = f64(logps_grad)
    advantages = _advantages(step, grad.shape)
    compact = _compact_advantages(
        step
    )  # (B, 1): the same masks as on the broadcast (B, T), B·T times cheaper
    # the per-row conditions first, at (B, 1): one (B, T) pass fewer than applying them one by one
    if known_finite(step, "advantages", "logps_grad"):  # the finite masks below are all True
        decidable = mask & (compact.abs() > scalar_like(atol, compact))
    else:
        compact_finite = finite_mask(step["advantages"]).reshape(compact.shape)  # the step's shared mask
        decidable = mask & ((compact.abs() > atol) & compact_finite) & finite_mask(grad)
    policy_scale, region, near = _policy_scale(effective, ratio, advantages)
    decidable &= ~(region | near)
    assert policy_scale is not None  # _SIGN_LOSS_TYPES all have a known policy slope
    if step.has("sampler_is_ratio"):
        sampler = f64(step["sampler_is_ratio"])
        sampler = sampler.expand(grad.shape) if sampler.shape[-1] == 1 else sampler
        decidable &= sampler > 0.0
    if effective.beta != 0:
        if _masked_tokens_allowed(
            effective
        ):  # a masked policy term leaves the KL gradient alone, of either sign
            return inconclusive(
                "β > 0 with an entropy / off-policy mask: where the mask drops the policy term, the KL gradient "
                "alone decides the sign"
            )
        kl_bound = _kl_gradient_bound(step, effective, ratio)
        if kl_bound is None:
            return inconclusive(
                "β > 0: needs logps and ref_logps to separate the KL gradient from the policy's"
            )
        decidable &= policy_scale > _KL_DOMINANCE * kl_bound
    count = count_true(decidable)
    if count == 0:
        return inconclusive("no token where the policy term alone decides the gradient sign")
    zero_ = scalar_like(0.0, grad)
    wrong = decidable & (grad * advantages > zero_)
    # without the loss mask, a zero gradient may just be padding: only wrong signs are judged then
    zero = decidable & (grad == zero_) if step.has("completion_mask") else torch.zeros_like(decidable)
    if count_true(wrong):
        row, token = argmax_2d(wrong.to(torch.int8))
        return Outcome(
            Verdict.FAIL,
            f"{int(wrong.sum())} of {count} unclipped token(s) have ∂L/∂logp with the sign of A "
            f"(row {row}: A = {fmt(float(advantages[row, token]))}, ∂L/∂logp = {fmt(float(grad[row, token]))}): "
            "gradient descent lowers the log-prob of good completions",
            figure=float(wrong.sum()),
            tolerance=0.0,
            row=row,
            token=token,
            details={"decidable_tokens": count, "wrong_sign": int(wrong.sum())},
        )
    any_zero = count_true(zero) > 0
    if any_zero and effective.loss_type in CLIP_LOSS_TYPES:
        eps_low, eps_high = effective.epsilon_low, effective.epsilon_high_effective
        if eps_high != eps_low:  # zero gradient exactly in the clip-higher window: the symmetric ε was used
            window = ((advantages > 0) & (ratio > 1 + min(eps_low, eps_high))) | (
                (advantages < 0) & (ratio < 1 - min(eps_low, eps_high))
            )
            in_window = zero & window
            if bool(in_window.any()) and int(in_window.sum()) == int(zero.sum()):
                row, token = argmax_2d(in_window.to(torch.int8))
                return Outcome(
                    Verdict.FAIL,
                    f"{int(in_window.sum())} token(s) with ρ between 1+ε_low and 1+ε_high "
                    f"(ε = {eps_low:g}, {eps_high:g}) get no gradient: clipped at the wrong ε "
                    f"(row {row}: ρ = {fmt(float(ratio[row, token]))}, A = {fmt(float(advantages[row, token]))})",
                    figure=float(in_window.sum()),
                    tolerance=0.0,
                    row=row,
                    token=token,
                    likely_cause="clip-higher ε_high computed but not used (the objective clips symmetrically "
                    "at ε_low)",
                    fix="clamp(ρ, 1 − ε_low, 1 + ε_high) with the configured ε_high",
                    details={"decidable_tokens": count, "zero_gradient": int(zero.sum())},
                )
    if any_zero and not _masked_tokens_allowed(effective):
        row, token = argmax_2d(zero.to(torch.int8))
        everywhere = int(zero.sum()) == count
        return Outcome(
            Verdict.FAIL if everywhere else Verdict.WARN,
            f"{int(zero.sum())} of {count} unclipped token(s) with A ≠ 0 receive exactly zero gradient",
            figure=float(zero.sum()),
            tolerance=0.0,
            row=row,
            token=token,
            likely_cause="the policy term is detached (e.g. ratio or logps computed under no_grad / .detach())"
            if everywhere
            else "these tokens are masked by something the capture does not show (tool_mask or truncated "
            "not recorded, an entropy / off-policy mask not declared in the spec)",
            fix="keep logps attached to the graph through ratio and loss; detach only old_logps"
            if everywhere
            else "record tool_mask / truncated, or declare the masking option in the GRPOSpec",
            details={"decidable_tokens": count, "zero_gradient": int(zero.sum())},
        )
    return passed(f"{count} unclipped token(s): sign(∂L/∂logp) = −sign(A)", 0.0, 0.0, decidable_tokens=count)


@register(
    "grad.zero_where_clipped",
    requires=[
        ("logps_grad", "advantages", "ratio"),
        ("logps_grad", "advantages", "logps", "old_logps"),
        ("logps_grad", "advantages", "is_low_clipped"),
        ("logps_grad", "advantages", "is_high_clipped"),
    ],
    catalog_ids=("21",),
    description="∂L/∂logp_t = 0 exactly where clipping is active ((A>0 ∧ ρ>1+ε_high) ∨ (A<0 ∧ ρ<1−ε_low))",
    tolerance="exact 0; tokens within 1e-4 of a clip boundary skipped",
    likely_cause="clipping computed but not applied (clip-higher epsilon unused, min/max swapped, dual clip "
    "on the wrong side), so clipped tokens still receive gradient",
    fix="per_token_loss = −min(ρ·A, clamp(ρ, 1−ε_low, 1+ε_high)·A) with the same ε the metrics use",
)
def zero_where_clipped(step: TraceStep, spec: GRPOSpec | None, *, tolerance: float | None = None) -> Outcome:
    effective = spec_or_default(spec)
    if effective.loss_type not in CLIP_LOSS_TYPES:
        return not_applicable(f"loss_type {effective.loss_type!r} has no zero-gradient clip region")
    if effective.beta != 0 or effective.entropy_coef != 0:
        return inconclusive("β ≠ 0 or entropy bonus: clipped tokens still get the KL/entropy gradient")
    grad = f64(step["logps_grad"])
    if grad.dim() != 2:
        return malformed(f"logps_grad must be (B, T), got {tuple(grad.shape)}")
    advantages = _advantages(step, grad.shape)
    ratio = _ratio(step, spec, grad)
    if ratio is not None:
        region, near = _clip_region(ratio, advantages, effective)
        region = region & ~near  # not in place: the masks are shared between checks
        source = "ρ, A and ε"
    else:
        region = torch.zeros(grad.shape, dtype=torch.bool, device=grad.device)
        for name in ("is_low_clipped", "is_high_clipped"):
            if step.has(name):
                flag = plain(step[name]).bool()
                region |= flag.expand(grad.shape) if flag.shape[-1] == 1 else flag
        source = "is_low_clipped / is_high_clipped"
    mask = loss_mask(step, spec)
    mask = token_mask(step, grad) if mask is None or mask.shape != grad.shape else mask
    region = region & mask
    clipped = count_true(region)
    if not clipped:
        return not_applicable("no token in the clip region")
    allowed = tolerance if tolerance is not None else 0.0
    leak = where_fill(region, torch.nan_to_num(grad.abs(), nan=torch.inf), -1.0)
    row, token = argmax_2d(leak)
    figure = float(leak[row, token])
    if figure <= allowed:
        return passed(
            f"{clipped} clipped token(s) get no gradient (clip region from {source})", figure, allowed
        )
    unclipped = mask & ~region & (grad != 0.0)
    typical = float(grad[unclipped].abs().median()) if bool(unclipped.any()) else None
    typical_text = f" (median |∂L/∂logp| on unclipped tokens: {fmt(typical)})" if typical is not None else ""
    return Outcome(
        Verdict.FAIL,
        f"{int((leak > allowed).sum())} of {clipped} clipped token(s) still receive gradient: "
        f"max |∂L/∂logp| = {fmt(figure)}{typical_text}",
        figure=figure,
        tolerance=allowed,
        row=row,
        token=token,
        details={"clipped_tokens": clipped, "clip_region_from": source, "median_unclipped_grad": typical},
    )


def _k3_slope(step: TraceStep) -> torch.Tensor:
    """``1 − exp(ref − logp)`` (∂k3/∂logp), shared between the checks of one step."""
    return cached(
        ("k3_slope", step["ref_logps"], step["logps"]), lambda: torch.rsub(policy_ref_exp(step), 1.0)
    )


def _kl_value(step: TraceStep, estimator: str) -> torch.Tensor:
    """Per-token KL estimate k_t from x = ref − logp (needed only with the bias correction), shared between
    the checks of one step."""

    def compute() -> torch.Tensor:
        x = policy_ref_gap(step)
        if estimator == "k1":
            return -x
        if estimator == "k2":
            return 0.5 * x**2
        return policy_ref_exp(step) - x - 1.0

    return cached(("kl_value", step["ref_logps"], step["logps"], estimator), compute)


def _abs_slope(step: TraceStep, estimator: str) -> torch.Tensor:
    """|∂k_t/∂logp_t| (1, |x|, |1 − eˣ| for k1, k2, k3), shared between the checks of one step."""

    def compute() -> torch.Tensor:
        x = policy_ref_gap(step)
        if estimator == "k1":
            return torch.ones_like(x)
        if estimator == "k2":
            return x.abs()
        return _k3_slope(step).abs()

    return cached(("abs_kl_slope", step["ref_logps"], step["logps"], estimator), compute)


def _beta_abs_slope(step: TraceStep, estimator: str, beta: float) -> torch.Tensor:
    """β·|∂k_t/∂logp_t| (= |β·∂k_t/∂logp_t| for β > 0: IEEE products are sign-symmetric), shared."""
    return cached(
        ("beta_abs_kl_slope", step["ref_logps"], step["logps"], estimator, beta),
        lambda: beta * _abs_slope(step, estimator),
    )


def _kl_gradient_direction(step: TraceStep, spec: GRPOSpec, ratio: torch.Tensor) -> torch.Tensor:
    """∂(per-token KL term)/∂logp_t up to a positive factor, for the estimator and bias correction in use."""
    x = policy_ref_gap(step)
    estimator = kl_estimator(step, spec)
    if estimator == "k1":
        slope = torch.ones_like(x)
    elif estimator == "k2":
        slope = -x
    else:
        slope = _k3_slope(step)
    if not spec.use_bias_correction_kl:
        return slope
    value = _kl_value(step, estimator)
    if spec.importance_sampling_level == "sequence":
        # ρ is the row's, ρ = exp(mean_s(logp_s − old_s)), so ∂ρ/∂logp_t = ρ/|o| and
        # ∂(Σ_s ρ·k_s)/∂logp_t = ρ·(k'_t + mean_s k_s): no k_t of its own
        return slope + _row_mean(step, value)
    return value + slope  # token ratio: ∂(ρ_t·k_t)/∂logp_t = ρ_t·(k_t + k'_t), ρ_t > 0


def _row_mean(step: TraceStep, values: torch.Tensor) -> torch.Tensor:
    """(B, 1) mean of ``values`` over each row's completion tokens."""
    mask = token_mask(step, values).double()
    return (values * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1)


@register(
    "grad.kl_sign_where_kl_dominates",
    requires=("logps_grad", "advantages", "logps", "ref_logps"),
    catalog_ids=("21", "18"),
    description="where the policy term is zero (A = 0, or clipped) or far smaller than β·∂KL, ∂L/∂logp_t has "
    "the sign of ∂KL_t/∂logp_t: the penalty pulls the policy towards the reference",
    tolerance="exact sign; tokens with |∂KL/∂logp| ≤ 1e-6, or where the policy term is within 2× of β·|∂KL|, "
    "not judged",
    likely_cause="KL penalty added with the wrong sign (loss − β·KL) or an estimator whose gradient differs "
    "from the configured one",
    fix="loss = policy term + β·KL with KL = k3 = exp(ref − logp) − (ref − logp) − 1 (or the configured estimator)",
)
def kl_sign_where_kl_dominates(
    step: TraceStep, spec: GRPOSpec | None, *, tolerance: float | None = None
) -> Outcome:
    effective = spec_or_default(spec)
    if effective.beta == 0:
        return not_applicable("β = 0: no KL penalty")
    if effective.entropy_coef != 0:
        return inconclusive("entropy bonus adds a gradient of either sign (entropy_coef ≠ 0)")
    logps_grad = step["logps_grad"]
    if logps_grad.dim() != 2:
        return malformed(f"logps_grad must be (B, T), got {tuple(logps_grad.shape)}")
    ratio = _ratio(step, spec, logps_grad)  # (its shape and device)
    if ratio is not None and effective.loss_type in CLIP_LOSS_TYPES and known_finite(step, "logps_grad"):
        mask = loss_mask(step, spec)
        mask = token_mask(step, logps_grad) if mask is None or mask.shape != logps_grad.shape else mask
        outcome = _kl_sign_host(
            step, effective, _host_grad(logps_grad), ratio, mask, tolerance if tolerance is not None else 1e-6
        )
        if outcome is not None:
            return outcome
    grad = f64(logps_grad)
    advantages = _advantages(step, grad.shape)
    policy_scale = None
    if ratio is None:  # off-policy with unknown ratio: only tokens without any policy term are judged
        ratio = torch.ones_like(grad)
        dominated = advantages == 0.0
        near = torch.zeros_like(dominated)
    else:
        policy_scale, region, near = _policy_scale(effective, ratio, advantages)
        dominated = (_row_view(advantages) == 0.0) | region
    direction = _kl_gradient_direction(step, effective, ratio)
    estimator = kl_estimator(step, effective)
    unweighted = not effective.use_bias_correction_kl  # direction = ∂k_t/∂logp_t: its |·| is shared
    if policy_scale is not None:
        if unweighted and effective.beta > 0:  # |β·d| = β·|d| exactly (× 1.0 for no bias correction: skipped)
            kl_gradient_abs = _beta_abs_slope(step, estimator, effective.beta)
        else:
            kl_gradient = effective.beta * direction
            if effective.use_bias_correction_kl:
                kl_gradient = kl_gradient * ratio
            kl_gradient_abs = kl_gradient.abs()
        dominated = dominated | (kl_gradient_abs > _KL_DOMINANCE * policy_scale)
    mask = loss_mask(step, spec)
    mask = token_mask(step, grad) if mask is None or mask.shape != grad.shape else mask
    floor = tolerance if tolerance is not None else 1e-6
    direction_abs = _abs_slope(step, estimator) if unweighted else direction.abs()
    judged = mask & dominated & ~near & (direction_abs > floor)
    if not known_finite(step, "logps_grad"):  # (a finite mask known all True changes nothing)
        judged = judged & finite_mask(grad)
    judged = judged & (grad != 0.0)
    count = count_true(judged)
    if count == 0:
        return not_applicable("no token where the KL penalty alone decides the gradient")
    wrong = judged & (grad * direction < 0.0)
    if not count_true(wrong):
        return passed(
            f"{count} KL-dominated token(s) move towards the reference", 0.0, 0.0, judged_tokens=count
        )
    row, token = argmax_2d(wrong.to(torch.int8))
    return Outcome(
        Verdict.FAIL,
        f"{int(wrong.sum())} of {count} KL-dominated token(s) are pushed away from the reference "
        f"(row {row}: A = {fmt(float(advantages[row, token]))}, ∂KL/∂logp ∝ {fmt(float(direction[row, token]))}, "
        f"∂L/∂logp = {fmt(float(grad[row, token]))})",
        figure=float(wrong.sum()),
        tolerance=0.0,
        row=row,
        token=token,
        details={"judged_tokens": count, "wrong_sign": int(wrong.sum())},
    )
