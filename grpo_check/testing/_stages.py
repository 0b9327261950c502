"""Internal: one check per stage — a user's output against the float64 reference on the same inputs.

Each ``check_<stage>`` returns ``None`` when the output agrees, else a :class:`Finding` whose message says
what differed, where (prompt, generation, token), by how much, what was allowed, and — when the output
matches a known variant (another ε, std convention, grouping, aggregation, estimator, token shift) — which
one, as the likely cause. Tolerance: torch's per-dtype (rtol, atol) plus a term for the rounding error a
correct computation in the output's dtype makes (k · unit roundoff · the scale of the operation).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from grpo_check.config import AGGREGATIONS, GRPOSpec
from grpo_check.findings import Finding
from grpo_check.testing._compare import compare_tensors, to_tensor, unit_roundoff

_K = 4.0  # rounding-error multiplier on top of torch's per-dtype tolerance


def _coarsest(*tensors: object) -> torch.dtype:
    """The floating dtype with the largest unit roundoff among the tensors given (float32 if none): a correct
    computation is only as precise as its coarsest input or output."""
    dtypes = [t.dtype for t in tensors if isinstance(t, torch.Tensor) and t.dtype.is_floating_point]
    return max(dtypes, key=unit_roundoff) if dtypes else torch.float32


def _roundoff(*tensors: object) -> float:
    return unit_roundoff(_coarsest(*tensors))


def _dtype_of(value: torch.Tensor, fallback: torch.dtype = torch.float32) -> torch.dtype:
    return value.dtype if value.dtype.is_floating_point else fallback


def _diagnose(
    actual: torch.Tensor,
    variants: list[tuple[str, Callable[[], torch.Tensor]]],
    *,
    mask: torch.Tensor | None,
    rtol: float | None,
    atol: float | None,
    extra: torch.Tensor | None,
    tolerance_dtype: torch.dtype | None = None,
) -> str | None:
    """The description of the first variant ``actual`` agrees with, if any."""
    for description, compute in variants:
        try:
            candidate = compute()
        except Exception:
            continue
        if candidate.shape != actual.shape and candidate.numel() != actual.numel():
            continue
        finding = compare_tensors(
            actual, candidate, name="variant", stage="-", check_id="-", mask=mask, rtol=rtol, atol=atol,
            extra_tolerance=extra, tolerance_dtype=tolerance_dtype,
        )  # fmt: skip
        if finding is None:
            return description
    return None


def _nan_cause(actual: torch.Tensor, mask: torch.Tensor | None = None) -> str | None:
    bad = ~torch.isfinite(actual.double())
    if mask is not None:
        bad = bad & torch.broadcast_to(mask.to(torch.bool), bad.shape)
    if bool(bad.any()):
        return (
            f"{int(bad.sum())} non-finite value(s) where the reference is finite: NaN rewards or empty (all-masked) "
            "rows leaking into statistics or denominators (bug-catalog 8, 9)"
        )
    return None


# ---------------------------------------------------------------- advantages


def check_advantages(
    actual: torch.Tensor,
    rewards_per_func: torch.Tensor,
    group_index: torch.Tensor,
    spec: GRPOSpec,
    *,
    step: int | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    diagnose: bool = True,
) -> Finding | None:
    """``actual`` (B,) against ``compute_advantages(rewards_per_func, group_index, spec)``."""
    from grpo_check.reference import compute_advantages

    tol_dtype = _coarsest(actual, rewards_per_func)
    actual = to_tensor(actual, "advantages")
    rewards_per_func = to_tensor(rewards_per_func, "rewards")
    group_index = to_tensor(group_index, "group_index").long()
    reference = compute_advantages(rewards_per_func, group_index, spec)
    extra = _advantage_rounding(reference, group_index, rewards_per_func, tol_dtype, spec)

    def adv(new_spec: GRPOSpec, rewards: torch.Tensor = rewards_per_func, index: torch.Tensor = group_index):
        return lambda: compute_advantages(rewards, index, new_spec).advantages

    finding = compare_tensors(
        actual, reference.advantages, name="advantages", stage="advantages", check_id="testing.advantages_close",
        group_index=group_index, rtol=rtol, atol=atol, extra_tolerance=extra, step=step, tolerance_dtype=tol_dtype,
    )  # fmt: skip
    if finding is None:
        return None
    if not diagnose:
        return finding
    rows = int(group_index.numel())
    n_prompts = int(torch.unique(group_index).numel())
    variants: list[tuple[str, Callable[[], torch.Tensor]]] = []
    if n_prompts > 1 and rows % n_prompts == 0:
        strided = torch.arange(rows) % n_prompts
        variants.append(
            (
                "rows grouped with repeat instead of repeat_interleave (view(G, -1) instead of view(-1, G)): the "
                "'groups' mix prompts (bug-catalog 6)",
                adv(spec, index=strided),
            )
        )
    other_std = "population" if spec.std == "sample" else "sample"
    variants.append(
        (
            f"{other_std} std where the configuration says {spec.std} (bug-catalog 10: a convention; if it is yours, "
            f"set GRPOSpec(std={other_std!r}))",
            adv(spec.replace(std=other_std)),
        )
    )
    for eps in (1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6, 1e-8, 0.0):
        if eps != spec.adv_epsilon:
            variants.append(
                (
                    f"advantage epsilon {eps:g} where the configuration says {spec.adv_epsilon:g} "
                    f"(bug-catalog {'S2' if eps > 1e-2 else '10'})",
                    adv(spec.replace(adv_epsilon=eps)),
                )
            )
    for scale in ("group", "batch", "none"):
        if scale != spec.scale_rewards:
            variants.append(
                (
                    f"scale_rewards={scale!r} where the configuration says {spec.scale_rewards!r}",
                    adv(spec.replace(scale_rewards=scale)),
                )
            )
    variants.append(
        (
            "NaN (unscorable) rewards counted as 0 in the group statistics instead of being left out (bug-catalog 8)",
            adv(spec, rewards=torch.nan_to_num(rewards_per_func, nan=0.0)),
        )
    )
    variants.append(("sign flipped (rewards − mean negated)", lambda: -reference.advantages))
    cause = _nan_cause(actual) or _diagnose(
        actual, variants, mask=None, rtol=rtol, atol=atol, extra=extra, tolerance_dtype=tol_dtype
    )
    finding.likely_cause = cause
    if cause is None:
        finding.likely_cause = "no known variant matches; compare group by group (mean, std, ε, NaN handling)"
    finding.fix = "compute A = (r − mean_group) / (std_group + ε) per prompt group as the configuration says"
    return finding


def _advantage_rounding(reference, group_index, rewards_per_func, dtype, spec: GRPOSpec) -> torch.Tensor:
    """k·u·(max|r| in the group + 1) / (σ + ε): the error a correct computation in ``dtype`` can make."""
    rewards = reference.rewards.abs().nan_to_num(0.0)
    scale = torch.zeros_like(rewards)
    for label in torch.unique(group_index).tolist():
        rows = group_index == label
        scale[rows] = rewards[rows].max()
    u = unit_roundoff(torch.float64 if rewards_per_func.dtype == torch.float64 else dtype)
    if spec.scale_rewards == "none":
        return _K * u * (scale + 1.0)
    sigma = reference.group_std.nan_to_num(0.0).abs()
    return _K * u * (scale + 1.0) / (sigma + spec.adv_epsilon).clamp(min=1e-12)


# ---------------------------------------------------------------- logps


def check_logps(
    actual: torch.Tensor,
    logits: torch.Tensor,
    completion_ids: torch.Tensor,
    spec: GRPOSpec,
    *,
    prompt_length: int | None = None,
    completion_mask: torch.Tensor | None = None,
    group_index: torch.Tensor | None = None,
    step: int | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    diagnose: bool = True,
) -> Finding | None:
    """``actual`` (B, T) against log-softmax(logits / τ) gathered at ``completion_ids``.

    ``prompt_length`` given: ``logits`` are the model's raw (B, P + T, V) output and the reference applies
    the one-token shift; ``None``: ``logits`` are already (B, T, V), shifted.
    """
    from grpo_check.reference import completion_logits, logps_from_logits

    tol_dtype = _coarsest(actual, logits)
    actual = to_tensor(actual, "logps")
    logits = to_tensor(logits, "logits")
    completion_ids = to_tensor(completion_ids, "completion_ids").long()
    length = completion_ids.shape[1]
    shifted = completion_logits(logits, prompt_length) if prompt_length is not None else logits
    tau = spec.temperature
    expected = logps_from_logits(shifted, completion_ids, tau)
    u = _roundoff(actual, logits)
    extra = _K * u * (logits.abs().amax().double() / tau + expected.abs() + 1.0)
    finding = compare_tensors(
        actual, expected, name="logps", stage="logps", check_id="testing.logps_close", mask=completion_mask,
        group_index=group_index, rtol=rtol, atol=atol, extra_tolerance=extra, step=step, tolerance_dtype=tol_dtype,
    )  # fmt: skip
    if finding is None:
        return None
    if not diagnose:
        return finding
    variants: list[tuple[str, Callable[[], torch.Tensor]]] = []
    if prompt_length is not None:
        variants.append(
            (
                "off by one token: logits[:, P:] used (position t predicts token t, not t+1) — drop the last "
                "logit and keep logits[:, P-1:-1] (logits[:, :-1][:, -T:])",
                lambda: logps_from_logits(
                    logits[:, prompt_length : prompt_length + length], completion_ids, tau
                ),
            )
        )
        if prompt_length >= 2:
            variants.append(
                (
                    "off by one token the other way: logits[:, P-2:-2] used",
                    lambda: logps_from_logits(logits[:, prompt_length - 2 : -2], completion_ids, tau),
                )
            )
    if tau != 1.0:
        variants.append(
            (
                "temperature not applied to the logits (bug: temperature bugs vanish at τ = 1)",
                lambda: logps_from_logits(shifted, completion_ids, 1.0),
            )
        )
        variants.append(
            ("temperature applied twice", lambda: logps_from_logits(shifted, completion_ids, tau * tau))
        )
    variants.append(("log-softmax sign flipped (logsumexp − logit; bug-catalog S1)", lambda: -expected))
    cause = _nan_cause(actual, completion_mask) or _diagnose(
        actual, variants, mask=completion_mask, rtol=rtol, atol=atol, extra=extra, tolerance_dtype=tol_dtype
    )
    if cause is None and bool(
        (actual.double()[completion_mask.bool() if completion_mask is not None else ...] > 1e-6).any()
    ):
        cause = "some log-prob > 0: a sign error or a low-precision log-softmax (bug-catalog S1, 32)"
    finding.likely_cause = cause or "no known variant matches (shift, temperature, sign)"
    finding.fix = "logps[b, t] = log_softmax(logits[b, P-1+t] / τ)[completion_ids[b, t]]"
    return finding


# ---------------------------------------------------------------- ratio


def check_ratio(
    actual: torch.Tensor,
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    completion_mask: torch.Tensor,
    spec: GRPOSpec,
    *,
    group_index: torch.Tensor | None = None,
    step: int | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    diagnose: bool = True,
) -> Finding | None:
    """``actual`` ((B, T) token level or (B, 1) sequence level) against exp(log ρ) (reference P1/P2)."""
    from grpo_check.reference import importance_ratio

    tol_dtype = _coarsest(actual, logps, old_logps)
    actual = to_tensor(actual, "ratio")
    mask = to_tensor(completion_mask, "completion_mask")
    level = spec.importance_sampling_level
    expected = importance_ratio(logps, old_logps, mask, level)
    u = _roundoff(actual, logps, old_logps)
    extra = _K * u * expected.abs() * (1.0 + expected.log().abs())
    compare_mask = mask if level == "token" else None
    finding = compare_tensors(
        actual, expected, name=f"ratio ({level} level)", stage="ratio", check_id="testing.ratio_close",
        mask=compare_mask, group_index=group_index, rtol=rtol, atol=atol, extra_tolerance=extra, step=step,
        tolerance_dtype=tol_dtype,
    )  # fmt: skip
    if finding is None:
        return None
    if not diagnose:
        return finding
    other = "sequence" if level == "token" else "token"
    log_ratio = logps.double() - old_logps.double()
    variants = [
        ("inverted ratio: exp(old_logps − logps)", lambda: 1.0 / expected),
        (f"{other}-level ratio where the configuration says {level}", lambda: importance_ratio(logps, old_logps, mask, other)),
        ("sequence ratio from the masked SUM of log-ratios instead of the mean (GSPO uses the mean)",
         lambda: (log_ratio * mask).sum(-1, keepdim=True).exp()),
        ("sequence ratio averaged over all T positions, padding included",
         lambda: log_ratio.mean(-1, keepdim=True).exp()),
    ]  # fmt: skip
    cause = _nan_cause(actual, compare_mask) or _diagnose(
        actual, variants, mask=compare_mask, rtol=rtol, atol=atol, extra=extra, tolerance_dtype=tol_dtype
    )
    finding.likely_cause = cause or "no known variant matches (inversion, level, masking)"
    finding.fix = "ρ = exp(logps − old_logps) per token (GSPO: exp of the masked mean per sequence)"
    return finding


# ---------------------------------------------------------------- kl


def check_kl(
    actual: torch.Tensor,
    logps: torch.Tensor,
    ref_logps: torch.Tensor,
    completion_mask: torch.Tensor,
    spec: GRPOSpec,
    *,
    actual_grad: torch.Tensor | None = None,
    group_index: torch.Tensor | None = None,
    step: int | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    diagnose: bool = True,
) -> Finding | None:
    """The bare per-token estimator ``spec.kl_estimator`` (no bias correction) and, given ``actual_grad``
    (∂Σ_t kl_t/∂logp_t), its gradient."""
    from grpo_check.reference import kl_estimator_grad, per_token_kl

    tol_dtype = _coarsest(actual, logps, ref_logps)
    actual = to_tensor(actual, "kl")
    mask = to_tensor(completion_mask, "completion_mask")
    estimator = spec.kl_estimator
    expected = per_token_kl(logps, ref_logps, estimator)
    delta = (ref_logps.double() - logps.double()).abs()
    u = _roundoff(actual, logps, ref_logps)
    extra = _K * u * (delta.exp() + delta + 1.0) * (1.0 + logps.double().abs())
    variants = [
        (f"estimator {other} where the configuration says {estimator} (bug-catalog 18)",
         (lambda o=other: per_token_kl(logps, ref_logps, o)))
        for other in ("k1", "k2", "k3") if other != estimator
    ]  # fmt: skip
    variants.append(("logps and ref_logps swapped", lambda: per_token_kl(ref_logps, logps, estimator)))
    finding = compare_tensors(
        actual, expected, name=f"kl ({estimator})", stage="kl", check_id="testing.kl_close", mask=mask,
        group_index=group_index, rtol=rtol, atol=atol, extra_tolerance=extra, step=step, tolerance_dtype=tol_dtype,
    )  # fmt: skip
    if finding is not None:
        cause = _nan_cause(actual, mask) or _diagnose(
            actual, variants, mask=mask, rtol=rtol, atol=atol, extra=extra, tolerance_dtype=tol_dtype
        )
        finding.likely_cause = cause or "no known variant matches (estimator, argument order)"
        finding.fix = "k3 = exp(ref − logp) − (ref − logp) − 1 per token"
        return finding
    if actual_grad is None:
        return None
    expected_grad = kl_estimator_grad(logps, ref_logps, estimator) * mask.double()
    finding = compare_tensors(
        actual_grad, expected_grad, name=f"∂kl/∂logps ({estimator})", stage="grad", check_id="testing.kl_grad_close",
        mask=mask, group_index=group_index, rtol=rtol, atol=atol, extra_tolerance=extra, step=step,
        tolerance_dtype=tol_dtype,
    )  # fmt: skip
    if finding is not None:
        zero = bool((to_tensor(actual_grad, "grad") == 0).all())
        finding.likely_cause = (
            "the gradient is zero: logps detached before the KL" if zero else
            "the KL value is right but its gradient is not that of the estimator (bug-catalog 18)"
        )  # fmt: skip
    return finding


# ---------------------------------------------------------------- loss and aggregation


def reference_loss_and_grad(
    logps: torch.Tensor,
    old_logps: torch.Tensor | None,
    advantages: torch.Tensor,
    completion_mask: torch.Tensor,
    spec: GRPOSpec,
    *,
    ref_logps: torch.Tensor | None = None,
    num_items_in_batch: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, ∂loss/∂logps, ratio) of the reference in float64."""
    from grpo_check.reference import aggregate_loss, per_token_loss

    leaf = logps.detach().double().clone().requires_grad_(True)
    old = None if old_logps is None else old_logps.detach().double()
    ptl = per_token_loss(leaf, old, advantages, completion_mask, spec, ref_logps=ref_logps)
    loss = aggregate_loss(ptl.per_token_loss, completion_mask, spec, num_items_in_batch).loss
    (grad,) = torch.autograd.grad(loss, leaf, allow_unused=True)
    grad = torch.zeros_like(leaf) if grad is None else grad
    return loss.detach(), grad, ptl.ratio.detach()


def check_loss(
    actual_loss: torch.Tensor,
    logps: torch.Tensor,
    old_logps: torch.Tensor | None,
    advantages: torch.Tensor,
    completion_mask: torch.Tensor,
    spec: GRPOSpec,
    *,
    actual_grad: torch.Tensor | None = None,
    ref_logps: torch.Tensor | None = None,
    num_items_in_batch: float | None = None,
    group_index: torch.Tensor | None = None,
    step: int | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    diagnose: bool = True,
) -> Finding | None:
    """Scalar loss and (if given) ∂loss/∂logps against the reference objective for ``spec.loss_type``."""
    tol_dtype = _coarsest(
        None if actual_loss is None else to_tensor(actual_loss, "loss"),
        None if actual_grad is None else to_tensor(actual_grad, "grad"),
        logps,
        old_logps,
        advantages,
    )
    mask = to_tensor(completion_mask, "completion_mask")
    loss, grad, ratio = reference_loss_and_grad(
        logps, old_logps, advantages, mask, spec, ref_logps=ref_logps, num_items_in_batch=num_items_in_batch
    )
    u = _roundoff(
        None if actual_loss is None else to_tensor(actual_loss, "loss"),
        None if actual_grad is None else to_tensor(actual_grad, "grad"),
        logps,
        old_logps,
        advantages,
    )
    if actual_loss is not None:
        scale = _abs_loss_scale(logps, old_logps, advantages, mask, spec, ref_logps, num_items_in_batch)
        finding = compare_tensors(
            actual_loss, loss, name=f"loss ({spec.loss_type})", stage="loss", check_id="testing.loss_close",
            rtol=rtol, atol=atol, extra_tolerance=torch.tensor(_K * u * scale), step=step, tolerance_dtype=tol_dtype,
        )  # fmt: skip
        if finding is not None and not diagnose:
            return finding
        if finding is not None:
            variants = [
                (f"aggregation {mode!r} where loss_type={spec.loss_type!r} uses {spec.aggregation_effective!r} (bug-catalog 5)",
                 (lambda m=mode: reference_loss_and_grad(logps, old_logps, advantages, mask, spec.replace(aggregation=m),
                                                         ref_logps=ref_logps, num_items_in_batch=num_items_in_batch)[0]))
                for mode in AGGREGATIONS if mode != spec.aggregation_effective
            ]  # fmt: skip
            variants.append(("loss sign flipped (maximising instead of minimising)", lambda: -loss))
            other_level = "sequence" if spec.importance_sampling_level == "token" else "token"
            variants.append(
                (
                    f"{other_level}-level importance ratio where the configuration says "
                    f"{spec.importance_sampling_level}",
                    lambda: reference_loss_and_grad(
                        logps,
                        old_logps,
                        advantages,
                        mask,
                        spec.replace(importance_sampling_level=other_level),
                        ref_logps=ref_logps,
                        num_items_in_batch=num_items_in_batch,
                    )[0],
                )
            )
            if spec.loss_type in ("grpo", "bnpo", "dr_grpo", "dapo", "luspo") and spec.beta == 0.0:
                variants.append(
                    (
                        "max instead of min in the clipped surrogate (bug-catalog 21)",
                        lambda: _max_surrogate_loss(
                            logps, old_logps, advantages, mask, spec, num_items_in_batch
                        ),
                    )
                )
            if spec.epsilon_high is not None:
                variants.append((
                    "epsilon_high computed but not used (clip-higher ignored; bug-catalog 21)",
                    lambda: reference_loss_and_grad(logps, old_logps, advantages, mask, spec.replace(epsilon_high=None),
                                                    ref_logps=ref_logps, num_items_in_batch=num_items_in_batch)[0],
                ))  # fmt: skip
            if spec.beta != 0.0:
                variants.append((
                    f"KL bias correction {'not ' if spec.use_bias_correction_kl else ''}applied "
                    f"(use_bias_correction_kl={spec.use_bias_correction_kl})",
                    lambda: reference_loss_and_grad(logps, old_logps, advantages, mask,
                                                    spec.replace(use_bias_correction_kl=not spec.use_bias_correction_kl),
                                                    ref_logps=ref_logps, num_items_in_batch=num_items_in_batch)[0],
                ))  # fmt: skip
            cause = _nan_cause(to_tensor(actual_loss, "loss")) or _diagnose(
                to_tensor(actual_loss, "loss"), variants, mask=None, rtol=rtol, atol=atol,
                extra=torch.tensor(_K * u * scale), tolerance_dtype=tol_dtype,
            )  # fmt: skip
            finding.likely_cause = cause or "no known variant matches (aggregation, sign, clipping, KL)"
            finding.fix = f"per-token loss of {spec.loss_type} aggregated with {spec.aggregation_effective}"
            return finding
    if actual_grad is None:
        return None
    # tokens whose ratio sits within rounding distance of a clip boundary can take either branch: skip them
    near = torch.zeros_like(grad, dtype=torch.bool)
    for bound in (1.0 - spec.epsilon_low, 1.0 + spec.epsilon_high_effective):
        near = near | ((ratio - bound).abs() <= _K * u * ratio.abs()).expand_as(grad)
    extra = _K * u * grad.abs().amax() * torch.ones_like(grad)
    finding = compare_tensors(
        actual_grad, grad, name=f"∂loss/∂logps ({spec.loss_type})", stage="grad", check_id="testing.grad_close",
        mask=~near, group_index=group_index, rtol=rtol, atol=atol, extra_tolerance=extra, step=step,
        tolerance_dtype=tol_dtype,
    )  # fmt: skip
    if finding is not None:
        finding.likely_cause = _grad_cause(to_tensor(actual_grad, "grad").double(), grad, mask)
        finding.fix = "differentiate through the ratio (do not detach logps); clip masks where the clip binds"
    return finding


def _max_surrogate_loss(logps, old_logps, advantages, mask, spec, num_items_in_batch) -> torch.Tensor:
    from grpo_check.reference import aggregate_loss, clip_ratio, importance_ratio

    ratio = importance_ratio(logps, old_logps, mask, spec.importance_sampling_level)
    clipped = clip_ratio(ratio, spec.epsilon_low, spec.epsilon_high_effective)
    adv = advantages.double().reshape(-1, 1)
    ptl = -torch.max(ratio * adv, clipped * adv).expand_as(logps)
    return aggregate_loss(ptl, mask, spec, num_items_in_batch).loss


def _abs_loss_scale(logps, old_logps, advantages, mask, spec, ref_logps, num_items_in_batch) -> float:
    from grpo_check.reference import aggregate_loss, per_token_loss

    ptl = per_token_loss(
        logps.detach(), old_logps, advantages, mask, spec, ref_logps=ref_logps
    ).per_token_loss
    return float(aggregate_loss(ptl.abs(), mask, spec, num_items_in_batch).loss.abs())


def _grad_cause(actual: torch.Tensor, expected: torch.Tensor, mask: torch.Tensor) -> str:
    m = mask.to(torch.bool)
    if bool((actual[m] == 0).all()) and bool((expected[m] != 0).any()):
        return (
            "the gradient is zero everywhere: logps (or the ratio) detached from the graph (bug-catalog 21)"
        )
    if bool(((actual != 0) & ~m).any()):
        return "padding positions receive gradient: the completion mask is not applied (bug-catalog 11)"
    both = m & (expected != 0) & (actual != 0)
    if bool(both.any()) and bool((torch.sign(actual[both]) == -torch.sign(expected[both])).all()):
        return "the gradient has the opposite sign everywhere: loss sign flipped (bug-catalog 21)"
    clipped = m & (expected == 0) & (actual != 0)
    if bool(clipped.any()):
        return (
            f"{int(clipped.sum())} token(s) get gradient where the clip binds (reference gradient 0): clipping "
            "on the wrong side, max instead of min, or epsilon_high ignored (bug-catalog 21)"
        )
    ratio = actual[both] / expected[both]
    if bool(both.any()) and bool(((ratio - ratio.mean()).abs() < 1e-3 * ratio.mean().abs()).all()):
        return f"the gradient is the reference's times {float(ratio.mean()):.4g} everywhere: a normaliser error (bug-catalog 4, 5)"
    return "per-token weights differ: a wrong aggregation / normaliser (bug-catalog 5)"


def check_aggregation(
    actual_loss: torch.Tensor,
    per_token_loss: torch.Tensor,
    completion_mask: torch.Tensor,
    spec: GRPOSpec,
    *,
    actual_grad: torch.Tensor | None = None,
    num_items_in_batch: float | None = None,
    group_index: torch.Tensor | None = None,
    step: int | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    diagnose: bool = True,
) -> Finding | None:
    """Scalar ``actual_loss`` against ``aggregate_loss(per_token_loss, mask, spec)``; ``actual_grad``
    (∂loss/∂per_token_loss, the per-token weights) against the reference weights."""
    from grpo_check.reference import aggregate_loss, aggregation_weights

    tol_dtype = _coarsest(to_tensor(actual_loss, "loss"), per_token_loss)
    mask = to_tensor(completion_mask, "completion_mask")
    values = to_tensor(per_token_loss, "per_token_loss")

    def aggregate(new_spec: GRPOSpec, new_mask: torch.Tensor = mask) -> torch.Tensor:
        return aggregate_loss(values, new_mask, new_spec, num_items_in_batch).loss

    expected = aggregate(spec)
    u = _roundoff(to_tensor(actual_loss, "loss"), values)
    scale = float(aggregate_loss(values.abs(), mask, spec, num_items_in_batch).loss.abs())
    extra = torch.tensor(_K * u * (scale + 1.0))
    finding = compare_tensors(
        actual_loss, expected, name=f"aggregated loss ({spec.aggregation_effective})", stage="loss",
        check_id="testing.aggregation_close", rtol=rtol, atol=atol, extra_tolerance=extra, step=step,
        tolerance_dtype=tol_dtype,
    )  # fmt: skip
    variants = [
        (f"aggregation {mode!r} where loss_type={spec.loss_type!r} uses {spec.aggregation_effective!r} (bug-catalog 5)",
         (lambda m=mode: aggregate(spec.replace(aggregation=m))))
        for mode in AGGREGATIONS if mode != spec.aggregation_effective
    ]  # fmt: skip
    variants.append(
        (
            "the completion mask is not applied: padding tokens counted (bug-catalog 11)",
            lambda: aggregate(spec, torch.ones_like(mask)),
        )
    )
    variants.append(
        (
            "dr_grpo normaliser uses this batch's T instead of max_completion_length",
            lambda: aggregate(spec.replace(max_completion_length=mask.shape[1])),
        )
    )
    if finding is not None and not diagnose:
        return finding
    if finding is not None:
        cause = _nan_cause(to_tensor(actual_loss, "loss")) or _diagnose(
            to_tensor(actual_loss, "loss"),
            variants,
            mask=None,
            rtol=rtol,
            atol=atol,
            extra=extra,
            tolerance_dtype=tol_dtype,
        )
        finding.likely_cause = cause or "no known aggregation matches"
        finding.fix = f"aggregate with {spec.aggregation_effective} (loss_type={spec.loss_type})"
        return finding
    if actual_grad is None:
        return None
    weights = aggregation_weights(mask, spec, num_items_in_batch)
    finding = compare_tensors(
        actual_grad, weights, name="per-token weights ∂loss/∂per_token_loss", stage="grad",
        check_id="testing.aggregation_weights_close", group_index=group_index, rtol=rtol, atol=atol,
        extra_tolerance=_K * u * weights.abs().amax() * torch.ones_like(weights), step=step,
        tolerance_dtype=tol_dtype,
    )  # fmt: skip
    if finding is not None:
        finding.likely_cause = (
            "the loss value is right but the per-token weights are not (detached normaliser?)"
        )
    return finding
