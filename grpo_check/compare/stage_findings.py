"""Findings per stage, each comparison fed the trainer's *own* upstream tensors (stage isolation).

* :func:`advantage_findings` — ``rewards`` (Σ_k w_k R_ik) and ``advantages`` from the trainer's rewards;
* :func:`logps_findings` — ``logps``/``ref_logps``/``old_logps`` against the reference's own forward pass,
  and the trainer-vs-sampler distribution metrics;
* :func:`downstream_findings` — ratio, KL, per-token loss, loss, normaliser, clip masks and ∂loss/∂logps
  from the trainer's log-probs and advantages.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from grpo_check._step_cache import bool_mask, host_view
from grpo_check.compare import distribution
from grpo_check.compare.mismatch import Extreme, mismatch_message
from grpo_check.compare.tensor_diff import (
    Comparison,
    StepContext,
    as_f64,
    compare_tensor,
    compare_tensors,
    not_captured,
)
from grpo_check.compare.tolerances import Tolerance, TolerancePolicy
from grpo_check.config import GRPOSpec
from grpo_check.findings import Finding, Verdict
from grpo_check.stepref.forward import forward_row_mask, forward_subset, model_logits, model_logps
from grpo_check.stepref.inputs import (
    StageReference,
    computed_dtype,
    decided_clip_branch,
    reference_advantages,
    reference_aggregation,
    reference_downstream,
    rounded_reference,
    same_precision_reference,
)
from grpo_check.trace.model import TraceStep

__all__ = [
    "ISOLATED_LOSS_CHECKS",
    "advantage_findings",
    "aggregation_finding",
    "downstream_findings",
    "logps_findings",
]

# RoPE models: positions 0..L−1 vs cumsum(mask) − 1 agree up to float rounding (~1e-5 nats); absolute position
# embeddings (GPT-2) differ by whole nats. Anything beyond this is a material difference (bug-catalog #14).
_POSITIONS_MATERIAL = Tolerance(rtol=1e-3, atol=1e-3, source="position-ids materiality")


def advantage_findings(
    step: TraceStep, spec: GRPOSpec, policy: TolerancePolicy, ctx: StepContext, ref: StageReference
) -> list[Finding]:
    findings: list[Finding] = []
    adv_out = reference_advantages(step, spec)
    if adv_out is None:
        if step.has("advantages"):
            findings.append(
                not_captured("advantages.values", "advantages", ctx, ["rewards_per_func (or rewards)"])
            )
        return findings
    ref.tensors.update(
        rewards=adv_out.rewards,
        advantages=adv_out.advantages,
        group_mean=adv_out.group_mean,
        group_std=adv_out.group_std,
        scorable=adv_out.scorable,
    )
    comparisons: list[Comparison] = []
    tensors = step.tensors  # (the step's dict: no TraceStep.has/__getitem__ call per name)
    if "rewards" in tensors and "rewards_per_func" in tensors:
        comparisons.append(
            Comparison(
                check_id="rewards.total",
                stage="rewards",
                name="rewards",
                what="total reward Σ_k w_k R_ik",
                trainer=tensors["rewards"],
                reference=adv_out.rewards,
                # unscorable rows (every reward function NaN) carry no total: TRL records 0, others NaN
                mask=adv_out.scorable,  # bool
                tolerance=policy.for_check("rewards.total", "rewards", computed_dtype(step, "rewards")),
            )
        )
    if "advantages" in tensors:
        trainer_adv = tensors["advantages"]
        want = adv_out.advantages
        if trainer_adv.dim() == 2:  # (B, T): the same advantage on every token of the row
            want = want.unsqueeze(1).expand_as(as_f64(trainer_adv))
        dtype = computed_dtype(step, "advantages")
        comparisons.append(
            Comparison(
                check_id="advantages.values",
                stage="advantages",
                name="advantages",
                what="advantages (from the trainer's rewards)",
                trainer=trainer_adv,
                reference=want,
                reference_same_precision=rounded_reference(want, dtype),
                tolerance=policy.for_check("advantages.values", "advantages", dtype),
                # the default mask: the completion mask for (B, T) advantages, every element for (B,) ones
                mask=None,
            )
        )
    findings += compare_tensors(comparisons, ctx)
    unscorable = _unscorable_finding(step, adv_out, ctx, findings)
    if unscorable is not None:
        findings.append(unscorable)
    return findings


def _unscorable_finding(
    step: TraceStep, adv_out: Any, ctx: StepContext, findings: list[Finding]
) -> Finding | None:
    """Rows whose every reward function returned NaN must not carry a score into the group statistics."""
    rewards = step.get("rewards")
    if rewards is None or _all_true(adv_out.scorable):
        return None
    unscorable = ~adv_out.scorable
    scored = unscorable & torch.isfinite(as_f64(rewards).reshape(-1))
    advantages_failed = any(
        f.check_id == "advantages.values" and f.verdict in (Verdict.FAIL, Verdict.WARN) for f in findings
    )
    if not bool(scored.any()):
        verdict, explanation = (
            Verdict.PASS,
            f"{int(unscorable.sum())} unscorable row(s) carry no total reward",
        )
        row = None
    else:
        row = int(torch.nonzero(scored)[0])
        value = float(as_f64(rewards).reshape(-1)[row])
        if advantages_failed:
            verdict = Verdict.FAIL
            explanation = (
                f"{int(scored.sum())} row(s) where every reward function returned NaN carry a finite total reward "
                f"(row {row}: {value:.4g}) and the advantages differ from the reference: the unscorable completion "
                "was scored and counted in the group statistics"
            )
        else:
            verdict = Verdict.PASS
            explanation = (
                f"{int(scored.sum())} unscorable row(s) record a finite total reward (row {row}: {value:.4g}), but "
                "the advantages match the reference: the score was not used in the group statistics"
            )
    return Finding(
        check_id="rewards.unscorable",
        stage="rewards",
        verdict=verdict,
        figure=float(scored.sum()),
        tolerance=0.0,
        where=ctx.where(row=row),
        kind="compare",
        explanation=explanation,
    )


def _all_true(mask: torch.Tensor) -> bool:
    """``bool(mask.all())`` of a bool mask: through a Python list for a few rows (``tolist`` dispatches no
    operation), through numpy on a small step (less per-call overhead)."""
    if mask.dim() == 1 and mask.numel() <= _LIST_ELEMENTS and mask.is_cpu:
        return all(mask.tolist())
    host = host_view(mask)
    return bool(host.all()) if host is not None else bool(mask.all())


_LIST_ELEMENTS = 256  # up to this many elements, a mask's test runs on its Python list


def _shaped_like(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``mask.expand_as(like)``, without the view (an operation) where the shapes already agree."""
    return mask if mask.shape == like.shape else mask.expand_as(like)


def _forward_comparison(
    step: TraceStep,
    name: str,
    check_id: str,
    reference: torch.Tensor,
    temperature: float,
    tolerance: Tolerance,
    note: str = "",
) -> Comparison:
    """The trainer's ``name`` against log-probs from the reference's own forward pass (on the step's forward
    rows: :func:`~grpo_check.stepref.forward.forward_subset`)."""
    return Comparison(
        check_id=check_id,
        stage="logps",
        name=name,
        what=f"{name} (vs the reference's own forward pass, T={temperature:g}{note}{_rows_note(step)})",
        trainer=step[name],
        reference=reference,
        reference_same_precision=same_precision_reference(reference, step, name),
        tolerance=tolerance,
        mask=forward_mask(step, reference),
    )


def forward_mask(step: TraceStep, like: torch.Tensor) -> torch.Tensor | None:
    """The elements a comparison with the reference's own forward pass covers: the completion tokens of the
    rows it ran on; ``None`` (the default mask) when it ran on every row."""
    rows = forward_row_mask(step)
    if rows is None or like.dim() != 2 or like.shape[0] != rows.shape[0]:
        return None
    mask = step.get("completion_mask")
    base = (
        mask.bool()
        if mask is not None and mask.shape == like.shape
        else torch.ones(like.shape, dtype=torch.bool)
    )
    return base & rows.to(base.device).unsqueeze(1)


def _rows_note(step: TraceStep) -> str:
    subset = forward_subset(step)
    return "" if subset is None else f"; on {len(subset.rows)} of {subset.total} rows"


def _note_forward_rows(step: TraceStep, finding: Finding) -> None:
    """Record on a forward-pass finding how many rows the forward ran on (read by :mod:`grpo_check.coverage`)."""
    subset = forward_subset(step)
    if subset is None and step.has("completion_ids"):
        rows = int(step["completion_ids"].shape[0])
        finding.details["forward_rows"] = {"rows": rows, "of": rows, "covers": []}
    elif subset is not None:
        finding.details["forward_rows"] = {
            "rows": len(subset.rows),
            "of": subset.total,
            "covers": list(subset.covers),
        }


@dataclasses.dataclass(frozen=True)
class _ForwardSlot:
    """A log-prob tensor to hold against the reference's own forward pass of ``source``."""

    name: str
    check_id: str
    source: Any
    """The model (or :class:`~grpo_check.stepref.forward.KnownLogps`) the reference ran."""
    temperature: float
    tolerance: Tolerance
    reference: torch.Tensor
    """The reference's log-probs (positions from the attention mask)."""


def _matching_forward_variant(
    step: TraceStep,
    name: str,
    check_id: str,
    source: Any,
    temperature: float,
    tol: Tolerance,
    ctx: StepContext,
) -> str | None:
    """Which known wrong forward pass the trainer's failing ``name`` equals, if one: ``"no_attention_mask"``
    (the model called without the attention mask) or, for the reference model, ``"temperature_1"`` (its
    logits not divided by the sampling temperature). Read by :mod:`grpo_check.diagnose.logps`."""
    variants: list[tuple[str, Any]] = [("no_attention_mask", lambda: model_logps(source, step, temperature,
                                                                                 attention="none"))]  # fmt: skip
    if name != "logps" and temperature != 1.0:  # the policy's temperature signatures: diagnose.temperature
        variants.append(("temperature_1", lambda: model_logps(source, step, 1.0)))
    for label, compute in variants:
        alt = compute()
        if alt is None:
            continue
        if _forward_comparison(step, name, check_id, alt, temperature, tol).run(ctx).verdict is Verdict.PASS:
            return label
    return None


def logps_findings(
    step: TraceStep,
    spec: GRPOSpec,
    policy: TolerancePolicy,
    ctx: StepContext,
    ref: StageReference,
    model: Any,
    ref_model: Any,
) -> list[Finding]:
    # one slot per source in order: a finding already made (not captured) or a comparison to run, batched
    slots: list[Finding | _ForwardSlot] = []
    comparisons: list[Comparison] = []
    for name, check_id, source, temperature in (
        ("logps", "logps.model", model, spec.temperature),
        ("ref_logps", "logps.ref_model", ref_model, spec.temperature),
    ):
        if source is None:
            continue
        if not step.has(name):
            slots.append(not_captured(check_id, "logps", ctx, [name]))
            continue
        want = model_logps(source, step, temperature)
        if want is None:
            slots.append(
                not_captured(
                    check_id, "logps", ctx, ["prompt_ids", "prompt_mask", "completion_ids", "completion_mask"]
                )
            )
            continue
        tol = policy.for_check(check_id, name, computed_dtype(step, name))
        slots.append(_ForwardSlot(name, check_id, source, temperature, tol, want))
        comparisons.append(_forward_comparison(step, name, check_id, want, temperature, tol))
    compared = iter(compare_tensors(comparisons, ctx))
    findings: list[Finding] = []
    for slot in slots:
        if isinstance(slot, Finding):
            findings.append(slot)
            continue
        name, check_id, source, temperature, tol, want = (
            slot.name,
            slot.check_id,
            slot.source,
            slot.temperature,
            slot.tolerance,
            slot.reference,
        )
        finding = next(compared)
        alt = None
        if finding.verdict is not Verdict.PASS:
            # position ids: a plain training forward uses 0..P+T−1 regardless of left padding
            alt = model_logps(source, step, temperature, positions="arange")
        if alt is not None:
            alt_finding = _forward_comparison(
                step, name, check_id, alt, temperature, tol, note=", arange position ids"
            ).run(ctx)
            if alt_finding.verdict is Verdict.PASS:
                # RoPE: the two position conventions agree up to rounding, and arange is what a plain training
                # forward uses; absolute positions: they differ, and the trainer ignores the left padding (#14)
                positions_differ = (
                    compare_tensor(
                        check_id=check_id,
                        stage="logps",
                        name=name,
                        trainer=alt,
                        reference=want,
                        tolerance=_POSITIONS_MATERIAL,
                        ctx=ctx,
                        mask=forward_mask(step, want),
                    ).verdict
                    is not Verdict.PASS
                )
                if positions_differ:
                    finding.details["matches_positions"] = "arange"
                else:
                    alt_finding.details["position_ids"] = "arange"
                    finding, want = alt_finding, alt
        if finding.verdict is not Verdict.PASS and "matches_positions" not in finding.details:
            matched = _matching_forward_variant(step, name, check_id, source, temperature, tol, ctx)
            if matched is not None:
                finding.details["matches_forward"] = matched
        ref.tensors[name] = want
        _note_forward_rows(step, finding)
        findings.append(finding)
    on_policy_old = step.meta.get("optimizer_steps_since_old_logps") == 0
    if model is not None and on_policy_old and step.has("old_logps") and "logps" in ref.tensors:
        # no optimizer step since the old log-probs were taken: they must equal the same forward pass
        want = ref.tensors["logps"]
        old_findings = compare_tensors(
            [
                Comparison(
                    check_id="logps.old_model",
                    stage="logps",
                    name="old_logps",
                    what=(
                        "old_logps (no optimizer step since: vs the reference's own forward pass"
                        f"{_rows_note(step)})"
                    ),
                    trainer=step["old_logps"],
                    reference=want,
                    reference_same_precision=same_precision_reference(want, step, "old_logps"),
                    tolerance=policy.for_check("logps.old_model", "logps", computed_dtype(step, "old_logps")),
                    mask=forward_mask(step, want),
                )
            ],
            ctx,
        )
        for finding in old_findings:
            _note_forward_rows(step, finding)
        findings += old_findings
    if model is not None and ref.logits is None and spec.truncated_sampling and step.has("sampler_logps"):
        # the full logits are needed only for the kept sampling mass S_t: one more forward, so only then
        ref.logits = model_logits(model, step)
    if "logps" in step.tensors and "sampler_logps" in step.tensors:
        findings.append(_sampler_finding(step, spec, ctx, ref))
    return findings


def _fmt(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.4f}"


def _sampler_finding(step: TraceStep, spec: GRPOSpec, ctx: StepContext, ref: StageReference) -> Finding:
    tensors = step.tensors  # (the step's dict: no TraceStep.get/has/__getitem__ call per name)
    mask = tensors.get("completion_mask")
    if mask is None:
        mask = torch.ones_like(tensors["logps"], dtype=torch.bool)
    # the sampler generated with the old weights: compare it with the trainer's log-probs at those weights
    trainer_name = "old_logps" if "old_logps" in tensors else "logps"
    metrics = distribution.sampler_metrics(tensors[trainer_name], tensors["sampler_logps"], mask)
    metrics["trainer_tensor"] = trainer_name
    if not metrics.get("tokens"):
        return Finding(
            check_id="logps.sampler",
            stage="logps",
            verdict=Verdict.INCONCLUSIVE,
            where=ctx.where(),
            kind="compare",
            explanation="trainer vs sampler log-probs: no finite masked token to compare",
        )
    residual_note = ""
    if spec.truncated_sampling and ref.logits is not None:
        from grpo_check.reference.logps import sampling_kept_mass

        kept = sampling_kept_mass(
            ref.logits, step.get("completion_ids"), spec.temperature, spec.top_p, spec.top_k or 0, spec.min_p
        )
        ref.tensors["kept_mass"] = kept
        expected = distribution.expected_d_from_kept_mass(kept)
        selected = mask.bool()
        rows = forward_row_mask(step)  # the rows the forward ran on (kept_mass is NaN on the others)
        if rows is not None and selected.dim() == 2 and selected.shape[0] == rows.shape[0]:
            selected = selected & rows.to(selected.device).unsqueeze(1)
        metrics["expected_mean_d"] = float(expected[selected].mean())
        residual_note = (
            f"; the sampling parameters (top_p={spec.top_p:g}, top_k={spec.top_k}, min_p={spec.min_p}) predict a "
            f"mean d of {metrics['expected_mean_d']:.3g} for a renormalising sampler"
        )
    k3, frac = metrics["k3"], metrics["frac_ratio_outside"]
    if k3 > distribution.FAIL_K3 or frac > distribution.FAIL_FRAC_OUTSIDE:
        verdict = Verdict.FAIL
    elif k3 > distribution.WARN_K3 or metrics["max_abs_d"] > 0.5:
        verdict = Verdict.WARN
    else:
        verdict = Verdict.PASS
    where = ctx.where(row=metrics["worst_row"], token=metrics["worst_token"])
    values = metrics["values"]
    shown = dict(metrics)  # every metric but the values, in order (a copy less one key: no comprehension)
    del shown["values"]
    return Finding(
        check_id="logps.sampler",
        stage="logps",
        verdict=verdict,
        figure=k3,
        tolerance=distribution.FAIL_K3,
        where=where,
        kind="compare",
        details={
            "metrics": shown,
            "values": values,
            "values_label": f"d = {trainer_name} − sampler_logps",
        },
        explanation=(
            f"trainer vs sampler log-probs (d = {trainer_name} − sampler_logps on {metrics['tokens']} tokens): "
            f"mean |d| {metrics['mean_abs_d']:.3g}, max |d| {metrics['max_abs_d']:.3g} (at {where.describe()}), "
            f"k1 {metrics['k1']:.3g}, k3 {k3:.3g}, Pearson {_fmt(metrics['pearson'])}, "
            f"{frac:.2%} of tokens with exp(d) outside [0.5, 2]{residual_note}"
        ),
    )


# stage-isolated comparisons the end-to-end pass repeats: quantity -> (isolated check id, its label)
ISOLATED_LOSS_CHECKS = {
    "per_token_loss": ("loss.per_token", "per-token loss (from the trainer's own upstream)"),
    "loss": ("loss.value", "aggregated loss (from the trainer's own upstream)"),
    "logps_grad": (
        "grad.logps_grad",
        "∂loss/∂logps (float64 autograd of the reference loss at the trainer's logps)",
    ),
}


def aggregation_finding(
    step: TraceStep, spec: GRPOSpec, policy: TolerancePolicy, ctx: StepContext, ref: StageReference
) -> Finding:
    """``loss`` against the aggregation of the trainer's own ``per_token_loss`` (``loss.aggregation``): the
    one loss check a step without its upstream (``logps``, ``advantages``) still allows."""
    want = reference_aggregation(step, spec)
    ref.tensors["loss"] = want
    return compare_tensors(
        [
            Comparison(
                check_id="loss.aggregation",
                stage="loss",
                name="loss",
                what=f"loss aggregated ({spec.aggregation_effective}) from the trainer's own per-token loss",
                trainer=step["loss"],
                reference=want,
                reference_same_precision=same_precision_reference(want, step, "loss"),
                tolerance=policy.for_check("loss.aggregation", "loss", computed_dtype(step, "loss")),
            )
        ],
        ctx,
    )[0]


# the stage-isolated comparisons of the reference downstream, in order: (quantity, check id, stage, label;
# None: the KL's, which names the estimator); masks: the loss mask for the per-token loss, the tokens whose
# clip branch is decided for ∂loss/∂logps, the default mask otherwise
_DOWNSTREAM_CHECKS: tuple[tuple[str, str, str, str | None], ...] = (
    ("ratio", "ratio.values", "ratio", "importance ratio ρ (from the trainer's logps and old_logps)"),
    ("clipped_ratio", "ratio.clipped", "ratio", "clipped ratio clip(ρ)"),
    ("sampler_is_ratio", "ratio.sampler_is", "ratio", "sampler importance-sampling weight"),
    ("kl", "kl.values", "kl", None),
    ("per_token_loss", "loss.per_token", "loss", ISOLATED_LOSS_CHECKS["per_token_loss"][1]),
    ("loss", "loss.value", "loss", ISOLATED_LOSS_CHECKS["loss"][1]),
    ("loss_normalizer", "loss.normalizer", "loss", "loss normaliser"),
    ("logps_grad", "grad.logps_grad", "grad", ISOLATED_LOSS_CHECKS["logps_grad"][1]),
)


def downstream_findings(
    step: TraceStep, spec: GRPOSpec, policy: TolerancePolicy, ctx: StepContext, ref: StageReference
) -> list[Finding]:
    findings: list[Finding] = []
    tensors = step.tensors  # (membership tests on the dict: step.has(name), without a call per name)
    needed = ("logps", "advantages", "ref_logps") if spec.beta != 0.0 else ("logps", "advantages")
    for name in ("ratio", "kl", "per_token_loss", "loss", "logps_grad"):  # (a loop: no generator)
        if name in tensors:
            break
    else:
        return findings
    missing = [n for n in needed if n not in tensors]
    down = None if missing else reference_downstream(step, spec)
    if down is None:
        for name, check_id, stage in (
            ("ratio", "ratio.values", "ratio"),
            ("kl", "kl.values", "kl"),
            ("per_token_loss", "loss.per_token", "loss"),
            ("loss", "loss.value", "loss"),
            ("logps_grad", "grad.logps_grad", "grad"),
        ):
            if step.has(name):
                findings.append(not_captured(check_id, stage, ctx, missing or ["entropies/sampler inputs"]))
        if missing and step.has("per_token_loss", "loss"):
            findings.append(aggregation_finding(step, spec, policy, ctx, ref))
        return findings
    ref.tensors.update({k: v for k, v in down.items() if k not in ("loss_mask",)})
    ref.notes["isolated_downstream"] = down
    loss_mask = _bool_loss_mask(down["loss_mask"], tensors.get("completion_mask"))
    comparisons: list[Comparison] = []
    for name, check_id, stage, what in _DOWNSTREAM_CHECKS:
        if name not in tensors or name not in down:
            continue
        got = tensors[name]
        if name == "logps_grad":
            if got is None:
                continue
            mask = _shaped_like(decided_clip_branch(down, spec, computed_dtype(step, "logps")), loss_mask)
        elif name == "per_token_loss":
            mask = loss_mask
        else:
            mask = None
            if what is None:  # the KL's label names the estimator
                what = f"per-token KL ({spec.kl_estimator}) from the trainer's logps and ref_logps"
        want = down[name]
        shaped = got if isinstance(got, torch.Tensor) else as_f64(got)  # its shape: no float64 copy needed
        if want.dim() == 2 and want.shape[1] == 1 and shaped.dim() == 2 and shaped.shape[1] != 1:
            want = want.expand_as(shaped)
        dtype = computed_dtype(step, name)
        comparisons.append(
            Comparison(
                check_id=check_id,
                stage=stage,
                name=name,
                what=what,
                trainer=got,
                reference=want,
                reference_same_precision=rounded_reference(want, dtype),
                tolerance=policy.for_check(check_id, name, dtype),
                mask=mask,
            )
        )
    findings += compare_tensors(comparisons, ctx)
    for name in ("is_low_clipped", "is_high_clipped"):
        if name in tensors and name in down:
            findings.append(_mask_finding(step, name, down[name], loss_mask, ctx))
    return findings


def _bool_loss_mask(loss_mask: torch.Tensor, completion_mask: torch.Tensor | None) -> torch.Tensor:
    """``loss_mask.bool()``; where the loss mask is the step's float64 copy of its completion mask itself (no
    tool mask, no truncation masking), the step's shared bool completion mask: the same values (x ≠ 0 before
    and after the exact widening), without a conversion of its own."""
    if completion_mask is not None and loss_mask is as_f64(completion_mask):
        return bool_mask(completion_mask)
    return loss_mask.bool()


def _mask_finding(
    step: TraceStep, name: str, want: torch.Tensor, loss_mask: torch.Tensor, ctx: StepContext
) -> Finding:
    got = step[name].bool()
    want = want.bool().expand_as(got) if want.shape != got.shape else want.bool()
    differ = (got ^ want) & loss_mask.expand_as(got)
    count = int(differ.sum())
    check_id = f"ratio.{name}"
    if count == 0:
        return Finding(
            check_id=check_id,
            stage="ratio",
            verdict=Verdict.PASS,
            figure=0.0,
            tolerance=0.0,
            where=ctx.where(),
            kind="compare",
            explanation=f"{name} matches the reference on every loss token",
        )
    flat = int(torch.nonzero(differ.reshape(-1))[0])
    row, token = divmod(flat, got.shape[1])
    return Finding(
        check_id=check_id,
        stage="ratio",
        verdict=Verdict.FAIL,
        figure=float(count),
        tolerance=0.0,
        where=ctx.where(row=row, token=token),
        kind="compare",
        explanation=mismatch_message(
            f"{name} (on the loss tokens)",
            mismatched=count,
            compared=int(loss_mask.expand_as(got).sum()),
            first=Extreme(
                difference=1.0,
                allowed=0.0,
                where=ctx.where(row=row, token=token),
                actual=float(got[row, token]),
                expected=float(want[row, token]),
            ),
            tolerance="exact (a boolean mask)",
        ),
    )
