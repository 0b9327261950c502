"""Objective signatures read from the loss and its gradient ∂loss/∂logps (the per-token weight applied).

* detached / missing gradient: ``logps_grad`` all zero (or never arrived) where the reference's is not;
* clipping not applied: non-zero gradient on tokens where the clip binds (the reference's is exactly 0);
* constant factor k: trainer grad = k × reference grad, k named from the normalisers
  (GAS, 1/GAS, spg/GAS, num_processes, …: bug-catalog #4) or −1 (loss sign, #21);
* variants: the trainer matches the reference run with another aggregation mode (grpo 1/(B|o_i|),
  dapo/bnpo 1/Σ|o|, dr_grpo 1/(B·L_max): #5), another KL estimator (k1/k2/k3, with or without the ρ
  factor: #18), the other importance-sampling level (sequence vs token), no KL term, or no policy term;
* the KL estimator is also identified from the ``kl`` values themselves.

A variant the trace *declares* (``meta["aggregation"]``/``meta["loss_type"]``/``meta["kl_estimator"]`` differing
from the spec) is a convention, not a bug.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch

from grpo_check._step_cache import host_view
from grpo_check.config import AGGREGATIONS, GRPOSpec
from grpo_check.diagnose._context import Diagnosis, close, constant_factor, worst
from grpo_check.findings import Finding, InputError, Verdict

_DOWNSTREAM_PREFIXES = ("loss.", "grad.", "kl.", "ratio.")


def _failing_downstream(dx: Diagnosis) -> list[Finding]:
    out: list[Finding] = []
    for prefix in _DOWNSTREAM_PREFIXES:
        out += dx.failing(prefix=prefix)
    return out


def named_factors(dx: Diagnosis) -> dict[str, float]:
    """Normaliser factors a trainer can get wrong, by name (values ≠ 1 only)."""
    meta, spec = dx.step.meta, dx.spec

    def as_int(key: str, default: int) -> int:
        try:
            return int(meta.get(key) or default)
        except (TypeError, ValueError):
            return default

    gas = as_int("gradient_accumulation_steps", spec.gradient_accumulation_steps)
    spg = as_int("steps_per_generation", spec.steps_per_generation or gas)
    procs = as_int("num_processes", spec.num_processes)
    factors: dict[str, float] = {"−1 (sign flipped)": -1.0}
    if gas != 1:
        factors["GAS"] = float(gas)
        factors["1/GAS"] = 1.0 / gas
    if spg != gas:
        factors["spg/GAS"] = spg / gas
        factors["GAS/spg"] = gas / spg
    if spg != 1:
        factors["steps_per_generation"] = float(spg)
        factors["1/steps_per_generation"] = 1.0 / spg
    if procs != 1:
        factors["num_processes"] = float(procs)
        factors["1/num_processes"] = 1.0 / procs
        if gas != 1:
            factors["GAS·num_processes"] = float(gas * procs)
            factors["1/(GAS·num_processes)"] = 1.0 / (gas * procs)
    if spec.num_iterations != 1:
        factors["num_iterations"] = float(spec.num_iterations)
        factors["1/num_iterations"] = 1.0 / spec.num_iterations
    return factors


def _name_factor(k: float, factors: dict[str, float]) -> str | None:
    for name, value in factors.items():
        if abs(k / value - 1.0) <= 2e-3:
            return name
    return None


def _target(dx: Diagnosis) -> tuple[str, torch.Tensor, torch.Tensor, torch.Tensor | None] | None:
    """The best available objective signal: (name, trainer, reference, mask) — gradient first."""
    for name, mask in (("logps_grad", None), ("per_token_loss", dx.mask), ("loss", None)):
        got, want = dx.trainer(name), dx.ref(name)
        if got is not None and want is not None:
            return name, got, want, mask
    return None


_PY_ELEMENTS = 256  # up to this many elements a test reads Python floats (tolist: no view, early exit)


def _any_nonzero(values: torch.Tensor) -> bool:
    """Any |value| > 0 (NaN is not): on a small step in Python floats (the conversion is exact; the first
    non-zero value answers, on most steps the first one), else in numpy (the same comparison, less overhead)."""
    dims = values.dim()
    if values.is_cpu and 1 <= dims <= 2 and values.numel() <= _PY_ELEMENTS:
        rows = values.tolist()
        for row in rows if dims == 2 else (rows,):
            for value in row:
                if abs(value) > 0.0:  # |NaN| > 0 is False, as in torch
                    return True
        return False
    host = host_view(values)
    if host is not None:  # the ufunc reduction ndarray.any calls, without its Python wrapper
        return bool(np.logical_or.reduce(np.abs(host) > 0, axis=None))
    return bool((values.abs() > 0).any())


def detect_detached_grad(dx: Diagnosis) -> list[Finding]:
    """No gradient reaches the log-probs (all zero, or it never arrived during backward)."""
    recorded = dx.recorded("logps_grad")  # its own dtype: |x| > 0 holds exactly where it does in float64
    if recorded is not None and _any_nonzero(recorded):
        return []  # a gradient arrived (asked first: the answer whatever the reference's is)
    want = dx.ref("logps_grad")
    missing = "logps_grad" in (dx.step.meta.get("missing_grads") or [])
    if want is None or not _any_nonzero(want):
        return []
    got = dx.trainer("logps_grad")
    if got is None and not missing:
        return []
    row, token, value = worst(want, dx.mask)
    how = "never arrived during backward" if got is None else "is exactly zero on every token"
    return [
        dx.finding(
            check_id="diagnose.detached_grad",
            stage="grad",
            catalog_id="21",
            figure=0.0,
            tolerance=value,
            where=dx.where(row=row, token=token),
            explanation=(
                f"the gradient ∂loss/∂logps {how}, while the reference's is up to {value:.3g} (at "
                f"{dx.where(row=row, token=token).describe()}): the loss does not depend on the policy log-probs"
            ),
            likely_cause=(
                "log-probs or the importance ratio detached from the graph (.detach(), torch.no_grad, .item(), "
                "or ratio computed from old_logps only)"
            ),
            fix="keep logps attached: ratio = exp(logps − old_logps.detach()); never detach the current policy term",
            attach_to=dx.failing(stage="grad") + dx.failing(stage="loss"),
        )
    ]


def detect_clipping_not_applied(dx: Diagnosis) -> list[Finding]:
    """Non-zero gradient where the clip binds: the clipped branch was computed but not used."""
    got, want, mask = dx.trainer("logps_grad"), dx.ref("logps_grad"), dx.mask
    if got is None or want is None or mask is None or not dx.failing(stage="grad"):
        return []
    if dx.spec.loss_type not in ("grpo", "bnpo", "dr_grpo", "dapo", "luspo") or dx.spec.beta != 0.0:
        clip_tokens = None
    else:
        clip_tokens = mask & (want == 0)
    if dx.downstream is None:
        return []
    unclipped = dx.downstream(dx.spec.replace(epsilon=1e12, epsilon_high=1e12, delta=None, dual_clip=None))
    if unclipped is None:
        return []
    if close(unclipped["logps_grad"], want, rtol=1e-6, atol=1e-12):
        return []  # nothing clips in this batch: the signature cannot show
    if not close(got, unclipped["logps_grad"], rtol=2e-3, atol=1e-9):
        return []
    binds = (unclipped["logps_grad"] - want).abs() > 0
    if clip_tokens is not None:
        binds = binds | (clip_tokens & (got.abs() > 0))
    binds = binds & mask
    row, token, value = worst(torch.where(binds, got, torch.zeros_like(got)), mask)
    return [
        dx.finding(
            check_id="diagnose.clipping_not_applied",
            stage="loss",
            catalog_id="21",
            figure=value,
            tolerance=0.0,
            where=dx.where(row=row, token=token),
            explanation=(
                f"the trainer's gradient equals the reference's with clipping disabled: {int(binds.sum())} token(s) "
                f"where the clip binds (reference gradient 0) get a non-zero gradient, the largest {value:.3g} at "
                f"{dx.where(row=row, token=token).describe()}"
            ),
            likely_cause=(
                "clipping computed but not applied (the min with the clipped branch is missing or uses the wrong "
                "tensor)"
            ),
            fix="per_token_loss = −min(ρ·A, clip(ρ, 1−ε_low, 1+ε_high)·A)",
            details={"clipped_tokens": int(binds.sum())},
            attach_to=_failing_downstream(dx),
        )
    ]


@dataclasses.dataclass
class _Variant:
    name: str
    spec: GRPOSpec
    overrides: dict[str, Any]
    catalog_id: str | None
    cause: str
    fix: str
    declared_as: tuple[str, str] | None = None  # (meta key, value) that would make it a convention
    stage: str = "loss"  # the stage the bug lives in (where the report should localise it)


def _variants(dx: Diagnosis) -> list[_Variant]:
    spec = dx.spec
    out: list[_Variant] = []
    effective = spec.aggregation_effective
    weights = {
        "token_mean": "1/Σ|o| (dapo/bnpo token mean)",
        "seq_mean_token_mean": "1/(B·|o_i|) (grpo sequence mean of token means)",
        "seq_mean_token_sum_norm": "1/(B·L_max) (dr_grpo)",
        "seq_mean_token_sum": "1/B (sequence mean of token sums)",
    }
    for aggregation in AGGREGATIONS:
        if aggregation == effective:
            continue
        loss_type = {
            "seq_mean_token_mean": "grpo",
            "seq_mean_token_sum_norm": "dr_grpo",
            "seq_mean_token_sum": "luspo",
        }
        variant_spec = spec.replace(aggregation=aggregation)
        if aggregation == "seq_mean_token_sum_norm" and spec.max_completion_length is None:
            variant_spec = variant_spec.replace(
                max_completion_length=int(dx.step["completion_mask"].shape[1])
            )
        out.append(
            _Variant(
                name=f"aggregation {aggregation}",
                spec=variant_spec,
                overrides={},
                catalog_id="5",
                cause=(
                    f"loss aggregated as {aggregation} (per-token weight {weights[aggregation]}) instead of "
                    f"{effective} (per-token weight {weights[effective]})"
                ),
                fix=f"use the {effective} normaliser of loss_type={spec.loss_type!r}",
                declared_as=("aggregation", aggregation)
                if aggregation not in loss_type
                else ("loss_type", loss_type[aggregation]),
            )
        )
    if spec.beta != 0.0:
        for estimator in ("k1", "k2", "k3"):
            for bias in (spec.use_bias_correction_kl, not spec.use_bias_correction_kl):  # the declared first
                if estimator == spec.kl_estimator and bias == spec.use_bias_correction_kl:
                    continue
                label = f"{'ρ·' if bias else ''}{estimator}"
                out.append(
                    _Variant(
                        name=f"KL estimator {label}",
                        spec=spec.replace(kl_estimator=estimator, use_bias_correction_kl=bias),
                        overrides={},
                        catalog_id="18",
                        cause=(
                            f"KL term uses the {label} estimator (gradient ∂/∂logp: "
                            f"{_KL_GRAD[estimator]}{' times ρ, plus ρ·k' if bias else ''}) instead of "
                            f"{'ρ·' if spec.use_bias_correction_kl else ''}{spec.kl_estimator}"
                        ),
                        fix=f"use kl_estimator={spec.kl_estimator!r} (use_bias_correction_kl={spec.use_bias_correction_kl})",
                        declared_as=("kl_estimator", estimator)
                        if bias == spec.use_bias_correction_kl
                        else None,
                        stage="kl",
                    )
                )
        out.append(
            _Variant(
                name="no KL term",
                spec=spec.replace(beta=0.0),
                overrides={},
                catalog_id="18",
                cause="the KL penalty is missing from the loss (or detached: it carries no gradient)",
                fix=f"add β·KL with β={spec.beta:g} to the per-token loss, attached to logps",
                stage="kl",
            )
        )
        out.append(
            _Variant(
                name="KL penalty with the wrong sign",
                spec=spec.replace(beta=-spec.beta),
                overrides={},
                catalog_id="21",
                cause="the KL penalty is subtracted instead of added (loss = policy − β·KL): the policy is pushed away "
                "from the reference",
                fix=f"per_token_loss = policy_loss + β·KL with β={spec.beta:g} > 0",
            )
        )
        if dx.trainer("advantages") is not None:
            out.append(
                _Variant(
                    name="no policy term",
                    spec=spec,
                    overrides={"advantages": torch.zeros_like(dx.trainer("advantages"))},
                    catalog_id="21",
                    cause="the policy-gradient term carries no gradient (ratio or log-probs detached); only KL trains",
                    fix="keep the importance ratio attached to logps: ratio = exp(logps − old_logps.detach())",
                    stage="grad",
                )
            )
    if dx.step.get("tool_mask") is not None:
        out.append(
            _Variant(
                name="tool_mask not applied to the loss",
                spec=spec,
                overrides={"tool_mask": None},
                catalog_id="28",
                cause="tool-output / non-policy tokens are trained on: the loss mask ignores tool_mask",
                fix="multiply the loss mask by tool_mask (1 = policy-generated token)",
            )
        )
    if dx.step.get("truncated") is not None and bool(dx.step["truncated"].any()):
        out.append(
            _Variant(
                name=f"mask_truncated_completions={not spec.mask_truncated_completions}",
                spec=spec.replace(mask_truncated_completions=not spec.mask_truncated_completions),
                overrides={},
                catalog_id="11",
                cause=(
                    "truncated completions (no EOS) "
                    + (
                        "are not masked out of the loss"
                        if spec.mask_truncated_completions
                        else "are masked out"
                    )
                    + f" although mask_truncated_completions={spec.mask_truncated_completions}"
                ),
                fix="apply mask_truncated_completions exactly as configured",
            )
        )
    other_level = "sequence" if spec.importance_sampling_level == "token" else "token"
    out.append(
        _Variant(
            name=f"{other_level}-level importance ratio",
            spec=spec.replace(importance_sampling_level=other_level),
            overrides={},
            catalog_id="X-ratio-level",
            cause=(
                f"importance ratio computed at {other_level} level instead of {spec.importance_sampling_level} level "
                "(sequence-vs-token ratio confusion)"
            ),
            fix=f"importance_sampling_level={spec.importance_sampling_level!r}: "
            + (
                "ρ_t = exp(logp_t − old_t)"
                if other_level == "sequence"
                else "ρ = exp(mean_t(logp_t − old_t))"
            ),
            stage="ratio",
        )
    )
    return out


_KL_GRAD = {"k1": "1", "k2": "log(π/π_ref)", "k3": "1 − π_ref/π"}


def _declared(dx: Diagnosis, key: str, value: str) -> bool:
    return str(dx.step.meta.get(key)) == value


def detect_objective_variant(dx: Diagnosis) -> list[Finding]:
    """The trainer matches the reference run with another objective (aggregation, KL estimator, ratio level,
    missing term), possibly times a named normaliser factor."""
    failing = [f for f in _failing_downstream(dx) if f.likely_cause is None]
    target = _target(dx)
    if not failing or target is None or dx.downstream is None:
        return []
    name, got, want, mask = target
    factors = named_factors(dx)
    k = constant_factor(got, want, mask, rtol=2e-3)
    if k is not None and abs(k - 1.0) > 2e-3:
        factor_name = _name_factor(k, factors)
        if factor_name is not None:
            return [_factor_finding(dx, name, got, want, mask, k, factor_name, failing)]
    for variant in _variants(dx):
        try:
            out = dx.downstream(variant.spec, **variant.overrides)
        except (InputError, RuntimeError, ValueError):
            continue
        if out is None or name not in out:
            continue
        candidate = out[name]
        if close(candidate, want, mask, rtol=1e-6, atol=1e-12):
            continue  # indistinguishable from the spec on this batch
        exact = close(got, candidate, mask, rtol=2e-3, atol=1e-9)
        kv = None if exact else constant_factor(got, candidate, mask, rtol=2e-3)
        factor_name = None if kv is None else _name_factor(kv, factors)
        if not exact and factor_name is None:
            continue
        declared = variant.declared_as is not None and _declared(dx, *variant.declared_as)
        error = (got - want).abs()
        row, token, value = worst(error, mask)
        suffix = f" × {factor_name} ({kv:.4g})" if factor_name else ""
        return [
            dx.finding(
                check_id="diagnose.objective_variant",
                stage=variant.stage,
                catalog_id=variant.catalog_id,
                verdict=Verdict.CONVENTION if declared and not factor_name else Verdict.FAIL,
                figure=value,
                where=dx.where(row=row, token=token),
                explanation=(
                    f"the trainer's {name} equals the reference run with {variant.name}{suffix} "
                    f"(largest difference from the spec's reference {value:.3g} at {dx.where(row=row, token=token).describe()})"
                    + (
                        "; the trace declares this choice, so it is a convention difference"
                        if declared
                        else ""
                    )
                ),
                likely_cause=variant.cause + (f"; and an extra factor {factor_name}" if factor_name else ""),
                fix=variant.fix,
                details={"variant": variant.name, "factor": kv, "factor_name": factor_name, "signal": name},
                attach_to=failing,
            )
        ]
    return []


def _factor_finding(
    dx: Diagnosis,
    name: str,
    got: torch.Tensor,
    want: torch.Tensor,
    mask: torch.Tensor | None,
    k: float,
    factor_name: str,
    failing: list[Finding],
) -> Finding:
    row, token, value = worst(got - want, mask)
    if factor_name.startswith("−1"):
        return dx.finding(
            check_id="diagnose.loss_sign",
            stage="loss",
            catalog_id="21",
            figure=k,
            tolerance=1.0,
            where=dx.where(row=row, token=token),
            explanation=f"the trainer's {name} is −1 × the reference's: the objective is maximised instead of minimised",
            likely_cause="loss sign flipped: per_token_loss = +min(ρA, clip(ρ)A) (the objective is maximised)",
            fix="minimise −min(ρ·A, clip(ρ)·A) (+ β·KL)",
            details={"factor": k},
            attach_to=failing,
        )
    return dx.finding(
        check_id="diagnose.normalizer_factor",
        stage="loss",
        catalog_id="4",
        figure=k,
        tolerance=1.0,
        where=dx.where(row=row, token=token),
        explanation=(
            f"the trainer's {name} is {k:.4g} × the reference's on every token: k = {factor_name} "
            f"(largest difference {abs(value):.3g} at {dx.where(row=row, token=token).describe()})"
        ),
        likely_cause=(f"gradient-accumulation / micro-batch loss normaliser wrong by a factor {factor_name}"),
        fix=(
            "normalise each micro-batch loss so that the accumulated gradient equals the full-batch gradient: "
            "divide by the global token count (num_items_in_batch / num_processes) scaled by GAS/steps_per_generation, "
            "or by GAS for per-micro-batch means"
        ),
        details={"factor": k, "factor_name": factor_name},
        attach_to=failing,
    )


def detect_unnamed_factor(dx: Diagnosis) -> list[Finding]:
    """Trainer = k × reference with a constant k no normaliser explains: still a normaliser bug."""
    failing = [f for f in _failing_downstream(dx) if f.likely_cause is None]
    target = _target(dx)
    if not failing or target is None:
        return []
    name, got, want, mask = target
    k = constant_factor(got, want, mask, rtol=2e-3)
    if k is None or abs(k - 1.0) <= 2e-3 or not math.isfinite(k):
        return []
    row, token, _value = worst(got - want, mask)
    return [
        dx.finding(
            check_id="diagnose.normalizer_factor",
            stage="loss",
            catalog_id="4",
            figure=k,
            tolerance=1.0,
            where=dx.where(row=row, token=token),
            explanation=(
                f"the trainer's {name} is {k:.4g} × the reference's on every token; no known normaliser "
                f"({', '.join(named_factors(dx))}) equals {k:.4g}"
            ),
            likely_cause="the loss normaliser differs by a constant factor",
            fix="check the denominator of the loss aggregation and the gradient-accumulation scaling",
            details={"factor": k},
            attach_to=failing,
        )
    ]


def detect_kl_estimator_values(dx: Diagnosis) -> list[Finding]:
    """Identify the KL estimator from the recorded per-token ``kl`` values (also with swapped arguments)."""
    from grpo_check.reference.kl import per_token_kl

    failing = [f for f in dx.failing(prefix="kl.") if f.likely_cause is None]
    if not failing:
        return []
    got, logps, ref_logps = dx.trainer("kl"), dx.trainer("logps"), dx.trainer("ref_logps")
    if got is None or logps is None or ref_logps is None:
        return []
    ratio = dx.ref("ratio")
    spec = dx.spec
    for swapped in (False, True):
        for estimator in ("k1", "k2", "k3"):
            for bias in (spec.use_bias_correction_kl, not spec.use_bias_correction_kl):  # the declared first
                if not swapped and estimator == spec.kl_estimator and bias == spec.use_bias_correction_kl:
                    continue
                if bias and (ratio is None or bool((ratio == 1).all())):  # ρ ≡ 1: ρ·k is k, named as k
                    continue
                first, second = (ref_logps, logps) if swapped else (logps, ref_logps)
                candidate = per_token_kl(first, second, estimator, ratio if bias else None)
                if not close(got, candidate, dx.mask, rtol=2e-3, atol=1e-7):
                    continue
                return [_kl_finding(dx, estimator, bias, swapped, got, failing)]
    return []


def _kl_finding(
    dx: Diagnosis, estimator: str, bias: bool, swapped: bool, got: torch.Tensor, failing: list[Finding]
) -> Finding:
    spec = dx.spec
    label = f"{'ρ·' if bias else ''}{estimator}"
    intended = f"{'ρ·' if spec.use_bias_correction_kl else ''}{spec.kl_estimator}"
    declared = (
        not swapped and _declared(dx, "kl_estimator", estimator) and bias == spec.use_bias_correction_kl
    )
    row, token, value = worst(got - dx.ref("kl"), dx.mask) if dx.ref("kl") is not None else (None, None, 0.0)
    if swapped:
        explanation = (
            f"the trainer's per-token KL equals {label} with its arguments swapped (logp and ref_logp exchanged): "
            f"it estimates KL(π_ref ‖ π) instead of KL(π ‖ π_ref)"
        )
        cause = f"KL estimator {label} called with (ref_logps, logps) instead of (logps, ref_logps)"
        fix = "k3 = exp(ref_logp − logp) − (ref_logp − logp) − 1 (ref first inside the exp)"
    else:
        explanation = f"the trainer's per-token KL equals the {label} estimator, not {intended}"
        cause = (
            f"KL estimator {label} used instead of {spec.kl_estimator}: its gradient ∂/∂logp is "
            f"{_KL_GRAD[estimator]} instead of {_KL_GRAD[spec.kl_estimator]}"
        )
        fix = f"use the {spec.kl_estimator} estimator (k3 = exp(ref − logp) − (ref − logp) − 1)"
    return dx.finding(
        check_id="diagnose.kl_estimator",
        stage="kl",
        catalog_id="18",
        verdict=Verdict.CONVENTION if declared else Verdict.FAIL,
        figure=value,
        where=dx.where(row=row, token=token),
        explanation=explanation,
        likely_cause=cause,
        fix=fix,
        details={"estimator": label, "swapped_arguments": swapped},
        attach_to=failing + [f for f in _failing_downstream(dx) if f.likely_cause is None],
    )
