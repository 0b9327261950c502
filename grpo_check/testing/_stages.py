"""Internal: one check per stage — a user's output held to the reference by the comparison the CLI runs.

Each ``check_<stage>`` puts the output and its inputs into a :class:`~grpo_check.trace.model.TraceStep`
under their canonical names and calls :func:`grpo_check.compare.compare_step` (the stage-isolated comparison
and the diagnoses of ``grpo-check compare``) on it; it returns ``None`` when that stage's comparison passes
and the failing :class:`Finding` otherwise, its likely cause filled in by the diagnoses. The testing API and
the CLI therefore give the same verdict on the same tensors. ``rtol``/``atol`` override the tolerance of the
stage's check as ``--tolerance CHECK=RTOL,ATOL`` does.

Two quantities a trace does not hold are compared here directly (with the same tensor comparison): the
gradient of the bare KL estimator and the per-token weights of an aggregation.
"""

from __future__ import annotations

from typing import Any

import torch

from grpo_check.config import GRPOSpec
from grpo_check.findings import Finding, InputError, Verdict
from grpo_check.signatures import signature
from grpo_check.testing._compare import compare_tensors, to_tensor, tolerance_value
from grpo_check.trace.model import TraceStep

# stage -> (check id, quantity, the likely cause when no diagnosis names one)
_CHECKS: dict[str, tuple[str, str, str]] = {
    "advantages": (
        "advantages.values",
        "advantages",
        "no known variant matches; compare group by group (mean, std, ε, NaN handling)",
    ),
    "logps": ("logps.model", "logps", "no known variant matches (shift, temperature, sign)"),
    "ratio": ("ratio.values", "ratio", "no known variant matches (inversion, level, masking)"),
    "kl": ("kl.values", "kl", "no known variant matches (estimator, argument order)"),
    "loss": ("loss.value", "loss", "no known variant matches (aggregation, sign, clipping, KL)"),
    "aggregation": ("loss.aggregation", "loss", "no known aggregation matches"),
    "grad": ("grad.logps_grad", "logps_grad", "per-token weights differ: a wrong aggregation or normaliser"),
}


class _Logits:
    """A stand-in model whose forward pass returns fixed logits (B, P+T, V), whatever it is fed: the reference
    scores them exactly as it scores a real model's (shift, temperature, gather), and the diagnoses can ask
    it for other temperatures and shifts."""

    training = False

    def __init__(self, logits: torch.Tensor):
        self.logits = logits

    def __call__(self, **_: Any) -> _Logits:
        return self

    def train(self, mode: bool = True) -> _Logits:
        return self


def _policy(stage: str, step: TraceStep, rtol: float | None, atol: float | None) -> Any:
    from grpo_check.compare.tolerances import TolerancePolicy
    from grpo_check.stepref.inputs import computed_dtype

    rtol = None if rtol is None else tolerance_value(rtol, "rtol")
    atol = None if atol is None else tolerance_value(atol, "atol")
    if rtol is None and atol is None:
        return TolerancePolicy()
    check_id, quantity, _ = _CHECKS[stage]
    default = TolerancePolicy().for_check(check_id, quantity, computed_dtype(step, quantity))
    pair = (default.rtol if rtol is None else rtol, default.atol if atol is None else atol)
    return TolerancePolicy(overrides={check_id: pair})


def _compare(
    stage: str,
    step: TraceStep,
    spec: GRPOSpec,
    *,
    rtol: float | None,
    atol: float | None,
    diagnose: bool,
    model: Any = None,
) -> Finding | None:
    """The stage's finding from ``compare_step`` when it fails (diagnosed), else ``None``."""
    from grpo_check.compare import compare_step

    check_id, _, fallback = _CHECKS[stage]
    policy = _policy(stage, step, rtol, atol)
    findings = compare_step(step, spec, tolerances=policy, model=model, diagnose=diagnose, end_to_end=False)
    finding = next((f for f in findings if f.check_id == check_id and f.kind == "compare"), None)
    if finding is None or finding.verdict is Verdict.NOT_CAPTURED:
        missing = ", ".join(finding.details.get("missing", [])) if finding is not None else check_id
        raise InputError(f"cannot compare {stage}: missing input(s) {missing}")
    if finding.verdict is not Verdict.FAIL:
        return None
    if diagnose and finding.likely_cause is None:
        finding.likely_cause = fallback
    return finding


def _step(tensors: dict[str, Any], step: int | None, **meta: Any) -> TraceStep:
    present = {name: to_tensor(value, name) for name, value in tensors.items() if value is not None}
    return TraceStep(tensors=present, meta={"step": step, **{k: v for k, v in meta.items() if v is not None}})


def _detached(value: Any, name: str) -> torch.Tensor | None:
    return None if value is None else to_tensor(value, name).detach()


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
    """``actual`` (B,) against the reference advantages of ``rewards_per_func`` (B,) or (B, F)."""
    rewards = to_tensor(rewards_per_func, "rewards")
    rewards = rewards.unsqueeze(1) if rewards.dim() == 1 else rewards
    tensors = {
        "rewards_per_func": rewards,
        "group_index": to_tensor(group_index, "group_index").long(),
        "advantages": actual,
    }
    if spec.reward_weights is not None:
        tensors["reward_weights"] = torch.tensor(spec.reward_weights, dtype=torch.float64)
    return _compare("advantages", _step(tensors, step), spec, rtol=rtol, atol=atol, diagnose=diagnose)


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
    logits = to_tensor(logits, "logits").detach()
    ids = to_tensor(completion_ids, "completion_ids").long()
    rows = ids.shape[0]
    if prompt_length is None:  # already shifted: a one-token prompt whose last logit predicts token 0
        logits = torch.cat([logits, torch.zeros_like(logits[:, :1])], dim=1)
        prompt_length = 1
    mask = torch.ones_like(ids) if completion_mask is None else to_tensor(completion_mask, "completion_mask")
    tensors = {
        "prompt_ids": torch.zeros((rows, prompt_length), dtype=torch.long),
        "prompt_mask": torch.ones((rows, prompt_length), dtype=torch.long),
        "completion_ids": ids,
        "completion_mask": mask.long(),
        "group_index": group_index,
        "logps": actual,
    }
    return _compare(
        "logps", _step(tensors, step), spec, rtol=rtol, atol=atol, diagnose=diagnose, model=_Logits(logits)
    )


# ---------------------------------------------------------------- ratio and kl


def _objective_only(spec: GRPOSpec, **changes: Any) -> GRPOSpec:
    """``spec`` without the terms a ratio or KL check has no inputs for (entropy mask, sampler correction)."""
    return spec.replace(top_entropy_quantile=1.0, sampler_is_correction=False, **changes)


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
    logps_t = _detached(logps, "logps")
    tensors = {
        "logps": logps_t,
        "old_logps": _detached(old_logps, "old_logps"),
        "completion_mask": completion_mask,
        "advantages": torch.zeros(logps_t.shape[0], dtype=torch.float64),  # the ratio does not depend on them
        "group_index": group_index,
        "ratio": actual,
    }
    return _compare(
        "ratio",
        _step(tensors, step),
        _objective_only(spec, beta=0.0),
        rtol=rtol,
        atol=atol,
        diagnose=diagnose,
    )


def check_kl(
    actual: torch.Tensor,
    logps: torch.Tensor,
    ref_logps: torch.Tensor,
    completion_mask: torch.Tensor,
    spec: GRPOSpec,
    *,
    old_logps: torch.Tensor | None = None,
    actual_grad: torch.Tensor | None = None,
    group_index: torch.Tensor | None = None,
    step: int | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    diagnose: bool = True,
) -> Finding | None:
    """The per-token estimator ``spec.kl_estimator`` and, given ``actual_grad`` (∂Σ_t kl_t/∂logp_t), its
    gradient. Without ``old_logps`` the ratio is 1 and the estimate is the bare one; with them (a captured
    step) ``spec.use_bias_correction_kl`` multiplies it by the importance ratio, as the CLI does."""
    from grpo_check.reference import kl_estimator_grad

    logps_t, ref_t = _detached(logps, "logps"), _detached(ref_logps, "ref_logps")
    mask = to_tensor(completion_mask, "completion_mask")
    tensors = {
        "logps": logps_t,
        "ref_logps": ref_t,
        "old_logps": _detached(old_logps, "old_logps"),
        "completion_mask": mask,
        "advantages": torch.zeros(logps_t.shape[0], dtype=torch.float64),  # the KL does not depend on them
        "group_index": group_index,
        "kl": actual,
    }
    with_kl = _objective_only(spec, beta=spec.beta or 1.0)  # (β only switches the KL term on)
    if old_logps is None:  # no ratio to correct by: the bare estimate (ρ ≡ 1, also where logps is ±inf)
        with_kl = with_kl.replace(use_bias_correction_kl=False)
    finding = _compare("kl", _step(tensors, step), with_kl, rtol=rtol, atol=atol, diagnose=diagnose)
    if finding is not None or actual_grad is None:
        return finding
    expected = kl_estimator_grad(logps_t, ref_t, spec.kl_estimator) * mask.double()
    finding = compare_tensors(
        actual_grad, expected, name=f"∂kl/∂logps ({spec.kl_estimator})", stage="grad",
        check_id="grad.kl_estimator", mask=mask, group_index=group_index, rtol=rtol, atol=atol, step=step,
    )  # fmt: skip
    if finding is not None and diagnose:
        zero = bool((to_tensor(actual_grad, "grad") == 0).all())
        match = signature("kl_detached" if zero else "kl_gradient_of_another_estimator")
        finding.likely_cause, finding.catalog_id = match.cause, match.catalog_id
    return finding


# ---------------------------------------------------------------- loss, gradient and aggregation


def check_loss(
    actual_loss: torch.Tensor | None,
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
    tensors = {
        "logps": _detached(logps, "logps"),
        "old_logps": _detached(old_logps, "old_logps"),
        "advantages": _detached(advantages, "advantages"),
        "completion_mask": completion_mask,
        "ref_logps": _detached(ref_logps, "ref_logps"),
        "group_index": group_index,
        "loss": actual_loss,
        "logps_grad": actual_grad,
    }
    trace_step = _step(tensors, step, num_items_in_batch=num_items_in_batch)
    spec = _objective_only(spec)
    if actual_loss is not None:
        finding = _compare("loss", trace_step, spec, rtol=rtol, atol=atol, diagnose=diagnose)
        if finding is not None or actual_grad is None:
            return finding
    if actual_grad is None:
        return None
    return _compare("grad", trace_step, spec, rtol=rtol, atol=atol, diagnose=diagnose)


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
    from grpo_check.reference import aggregation_weights

    mask = to_tensor(completion_mask, "completion_mask")
    tensors = {
        "per_token_loss": _detached(per_token_loss, "per_token_loss"),
        "completion_mask": mask,
        "loss": actual_loss,
    }
    trace_step = _step(tensors, step, num_items_in_batch=num_items_in_batch)
    finding = _compare("aggregation", trace_step, spec, rtol=rtol, atol=atol, diagnose=diagnose)
    if finding is not None or actual_grad is None:
        return finding
    weights = aggregation_weights(mask, spec, num_items_in_batch)
    finding = compare_tensors(
        actual_grad, weights, name="per-token weights ∂loss/∂per_token_loss", stage="grad",
        check_id="grad.aggregation_weights", group_index=group_index, rtol=rtol, atol=atol, step=step,
    )  # fmt: skip
    if finding is not None and diagnose:
        match = signature("aggregation_weights_detached")
        finding.likely_cause, finding.catalog_id = match.cause, match.catalog_id
    return finding


__all__ = ["check_advantages", "check_aggregation", "check_kl", "check_logps", "check_loss", "check_ratio"]
