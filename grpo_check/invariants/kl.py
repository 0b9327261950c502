"""KL-stage invariants: finite, k2/k3 ≥ 0, KL = 0 at step 0 when the reference is the initial policy."""

from __future__ import annotations

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
    f64,
    finite_mask,
    finite_outcome,
    fmt,
    inconclusive,
    known_finite,
    masked_abs_max,
    not_applicable,
    passed,
    plain,
    rtol_atol,
    spec_or_default,
    valid_finite,
    where_fill,
)
from grpo_check.invariants.ratio import SMALL_LOG_RATIO
from grpo_check.invariants.registry import register
from grpo_check.trace.model import TraceStep


@register(
    "kl.finite",
    requires=("kl",),
    description="per-token KL is finite on completion tokens",
    tolerance="exact",
    likely_cause="exp(ref_logps − logps) overflowed: reference log-probs misaligned with the policy's, or "
    "a -inf log-prob",
    fix="align ref_logps with logps (same shift, same tokens) and compute the KL in float32",
)
def kl_finite(step: TraceStep, spec: GRPOSpec | None, *, tolerance: float | None = None) -> Outcome:
    return finite_outcome(step, ("kl",))


def policy_ref_gap(step: TraceStep) -> torch.Tensor:
    """``ref_logps − logps`` in float64 (the KL's x), shared between the checks of one step."""
    return cached(
        ("ref_minus_logps", step["ref_logps"], step["logps"]),
        lambda: f64(step["ref_logps"]) - f64(step["logps"]),
    )


def policy_ref_exp(step: TraceStep) -> torch.Tensor:
    """``exp(ref_logps − logps)``, shared between the checks of one step."""
    return cached(
        ("exp_ref_minus_logps", step["ref_logps"], step["logps"]), lambda: torch.exp(policy_ref_gap(step))
    )


def policy_ref_valid(step: TraceStep) -> torch.Tensor:
    """Completion tokens where logps and ref_logps are both finite, shared between the checks of one step."""
    if known_finite(step, "logps", "ref_logps"):  # both finite: the mask is the token mask itself
        return valid_finite(step, step["logps"])
    return cached(
        ("policy_ref_valid", id(step), step["logps"], step["ref_logps"]),
        lambda: valid_finite(step, step["logps"]) & finite_mask(step["ref_logps"]),
    )


def kl_estimator(step: TraceStep, spec: GRPOSpec | None) -> str:
    return str(step.meta.get("kl_estimator") or spec_or_default(spec).kl_estimator)


@register(
    "kl.nonnegative",
    requires=("kl",),
    catalog_ids=("18",),
    description="k2 and k3 (and ρ·k3) per-token KL estimates are ≥ 0 (k1 may be negative)",
    tolerance="rtol of the kl dtype × max(1, max|kl|)",
    likely_cause="KL estimator implemented with a sign error (e.g. log(π_ref/π) and π/π_ref swapped "
    "inconsistently) or k1 used where k3 was configured",
    fix="k3 = exp(ref − logp) − (ref − logp) − 1, which is ≥ 0 for every token",
)
def nonnegative(step: TraceStep, spec: GRPOSpec | None, *, tolerance: float | None = None) -> Outcome:
    estimator = kl_estimator(step, spec)
    if estimator == "k1":
        return not_applicable("the k1 estimator (logp − ref_logp) is negative on some tokens by design")
    kl = step["kl"]
    # a float32 / float64 KL read in its own dtype: negation, |·|, where and max are exact, so the maxima are
    # the float64 copy's numbers (no copy made); other dtypes, and the comparison below, in float64
    values = plain(kl) if kl.dtype is torch.float32 or kl.dtype is torch.float64 else f64(kl)
    valid = valid_finite(step, values)
    if not any_true(valid):
        return inconclusive("no valid token")
    rtol, _ = rtol_atol(kl.dtype)
    extremes = _host_extremes(values, valid)
    if extremes is not None:  # (max |kl|, min kl) over the valid tokens, in numpy
        scale, lowest = extremes
        allowed = tolerance if tolerance is not None else rtol * max(1.0, scale)
        if lowest >= -allowed:
            return passed(f"min {estimator} KL {fmt(lowest)} ≥ 0", lowest, allowed)
    allowed = tolerance if tolerance is not None else rtol * max(1.0, masked_abs_max(values, valid))
    masked = where_fill(valid, -values, -torch.inf)
    lowest = -float(masked.max())  # the value at argmax_2d(masked); the position is only needed on failure
    if lowest >= -allowed:
        return passed(f"min {estimator} KL {fmt(lowest)} ≥ 0", lowest, allowed)
    row, token = argmax_2d(masked)
    values = f64(kl)
    return Outcome(
        Verdict.FAIL,
        f"{int(((values < -allowed) & valid).sum())} token(s) have negative {estimator} KL (min {fmt(lowest)})",
        figure=lowest,
        tolerance=allowed,
        row=row,
        token=token,
    )


def _host_extremes(values: torch.Tensor, valid: torch.Tensor) -> tuple[float, float] | None:
    """(``masked_abs_max(values, valid)``, ``-float(where_fill(valid, -values, -inf).max())``) of a small
    float32/float64 CPU tensor in numpy: the same |·|, negation and maxima (``valid`` selects ≥ 1 position,
    all finite). ``None`` without numpy views, for another shape, or when the lowest value is a zero (which
    of ±0 a maximum returns depends on the order it visits them in): the torch path decides."""
    view, keep = host_view(values), host_view(valid)
    if view is None or keep is None or view.shape != keep.shape or view.size == 0:
        return None
    # min and max over the valid values, two reductions: the largest of −v is −min v (negation is exact),
    # and max |v| over finite values (with 0, the fill) is the largest of 0, max v and −min v
    lowest = float(_minimum_reduce(view, axis=None, initial=np.inf, where=keep))
    if lowest == 0.0 or lowest != lowest:  # (a NaN, which valid leaves out: the torch path, as any doubt)
        return None
    highest = float(_maximum_reduce(view, axis=None, initial=-np.inf, where=keep))
    return max(0.0, highest, -lowest), lowest


_maximum_reduce = np.maximum.reduce
_minimum_reduce = np.minimum.reduce


@register(
    "kl.zero_at_step0",
    requires=[("logps", "ref_logps", "meta.step"), ("kl", "meta.step")],
    catalog_ids=("20",),
    description="at step 0 (no optimizer step yet) the policy equals the reference: logps = ref_logps, KL = 0",
    tolerance="rtol·max(1, max|logp|) + atol of the logps dtype (torch.testing defaults)",
    likely_cause="wrong reference model (not the initial policy, adapter not disabled, different dtype or "
    "dropout in one of the two forwards)",
    fix="build the reference as a frozen copy of the initial policy (or disable the adapter) in eval mode "
    "and the same dtype",
)
def zero_at_step0(step: TraceStep, spec: GRPOSpec | None, *, tolerance: float | None = None) -> Outcome:
    if int(step.meta["step"]) != 0:
        return not_applicable(f"step {int(step.meta['step'])} > 0")
    if step.meta.get("ref_is_init") is False:
        return not_applicable("meta ref_is_init is False")
    if step.meta.get("policy_changed_since_start") is False:
        return not_applicable(
            "the optimizer steps so far changed no parameter (zero updates): policy = reference"
        )
    if step.has("logps", "ref_logps"):
        logps = f64(step["logps"])
        valid = policy_ref_valid(step)
        if not any_true(valid):
            return inconclusive("no valid token")
        rtol, atol = rtol_atol(step["logps"].dtype)
        allowed = tolerance if tolerance is not None else rtol * max(1.0, masked_abs_max(logps, valid)) + atol
        deviation = where_fill(valid, policy_ref_gap(step).abs(), -1.0)
        quantity = "|logp − ref_logp|"
    else:
        values = f64(step["kl"])
        valid = valid_finite(step, values)
        if not any_true(valid):
            return inconclusive("no valid token")
        rtol, atol = rtol_atol(step["kl"].dtype)
        allowed = tolerance if tolerance is not None else 10 * (rtol + atol)
        deviation = where_fill(valid, values.abs(), -1.0)
        quantity = "|KL|"
    row, token = argmax_2d(deviation)
    figure = float(deviation[row] if token is None else deviation[row, token])
    if figure <= allowed:
        return passed(f"step 0: max {quantity} = {fmt(figure)}", figure, allowed)
    small = quantity.startswith("|logp") and figure <= SMALL_LOG_RATIO and tolerance is None
    return Outcome(
        Verdict.WARN if small else Verdict.FAIL,
        f"at step 0 the reference differs from the policy: max {quantity} = {fmt(figure)} on "
        f"{int(((deviation > allowed) & valid).sum())} token(s)"
        + (" — small: the reference runs in another dtype or batch shape" if small else ""),
        figure=figure,
        tolerance=allowed,
        row=row,
        token=token,
        likely_cause="reference forward in a different dtype / batch shape than the policy's (numerical noise, "
        "not a different model)"
        if small
        else None,
        fix="run the reference in the policy's dtype and micro-batching" if small else None,
    )


@register(
    "kl.reference_frozen",
    requires=[("logps", "ref_logps", "meta.step"), ("kl", "meta.step")],
    catalog_ids=("20",),
    description="after optimizer steps (step ≥ 1) the policy has moved away from the reference somewhere "
    "(logps ≠ ref_logps, KL ≠ 0)",
    tolerance="flagged when every token is within the on-policy tolerance (rtol·max(1, max|logp|) + atol)",
    likely_cause="wrong reference model: the reference is the current policy (ref = policy, or the adapter "
    "was not disabled for the reference forward), so the KL penalty is always 0",
    fix="build the reference as a frozen copy of the initial policy (or disable the adapter) and never "
    "update it",
)
def reference_frozen(step: TraceStep, spec: GRPOSpec | None, *, tolerance: float | None = None) -> Outcome:
    current = int(step.meta["step"])
    if current < 1:
        return not_applicable("no optimizer step yet (step 0)")
    if step.meta.get("ref_is_init") is False:
        return not_applicable("meta ref_is_init is False")
    if step.meta.get("policy_changed_since_start") is False:
        return not_applicable(
            "the optimizer steps so far changed no parameter (zero updates): policy = reference"
        )
    if step.has("logps", "ref_logps"):
        logps = f64(step["logps"])
        valid = policy_ref_valid(step)
        rtol, atol = rtol_atol(step["logps"].dtype)
        scale = masked_abs_max(logps, valid) if any_true(valid) else 1.0
        allowed = tolerance if tolerance is not None else rtol * max(1.0, scale) + atol
        deviation = policy_ref_gap(step)  # |logp − ref| = |ref − logp| exactly
        quantity = "|logp − ref_logp|"
    else:
        values = f64(step["kl"])
        valid = valid_finite(step, values)
        rtol, atol = rtol_atol(step["kl"].dtype)
        allowed = tolerance if tolerance is not None else rtol + atol
        deviation = values
        quantity = "|KL|"
    if not any_true(valid):
        return inconclusive("no valid token")
    figure = masked_abs_max(deviation, valid)  # = max of |deviation| over valid (finite there, ≥ 0)
    if figure > allowed:
        return passed(
            f"step {current}: the policy differs from the reference (max {quantity} = {fmt(figure)})",
            figure,
            allowed,
        )
    return Outcome(
        Verdict.WARN,
        f"at step {current} the policy still equals the reference on every token (max {quantity} = "
        f"{fmt(figure)}): the reference follows the policy (legitimate only with learning rate 0)",
        figure=figure,
        tolerance=allowed,
    )
