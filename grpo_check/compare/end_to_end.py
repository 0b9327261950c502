"""The end-to-end pass: the reference from the rewards onward with its own upstream (its advantages, and given
a model its own log-probs), reported as ``e2e.*`` findings beside the stage-isolated ones."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from grpo_check.compare.stage_findings import ISOLATED_LOSS_CHECKS
from grpo_check.compare.tensor_diff import Comparison, StepContext, compare_tensors
from grpo_check.compare.tolerances import Tolerance, TolerancePolicy
from grpo_check.config import GRPOSpec
from grpo_check.findings import Finding, InputError, Verdict
from grpo_check.stepref.context import as_f64
from grpo_check.stepref.forward import forward_row_mask
from grpo_check.stepref.inputs import (
    StageReference,
    computed_dtype,
    decided_clip_branch,
    reference_downstream,
    same_precision_reference,
)
from grpo_check.trace.model import TraceStep

__all__ = ["end_to_end_findings", "repeat_isolated"]


def end_to_end_findings(
    step: TraceStep,
    spec: GRPOSpec,
    policy: TolerancePolicy,
    ctx: StepContext,
    ref: StageReference,
    upstream: list[Finding],
) -> list[Finding]:
    """Reference from the rewards onward with its own upstream; reported as ``e2e.*``."""
    findings: list[Finding] = []
    ref_adv = ref.tensors.get("advantages")
    if ref_adv is None:
        return findings
    tensors = step.tensors  # (membership tests on the dict: no step.has call per name)
    overrides: dict[str, torch.Tensor | None] = {"advantages": ref_adv}
    if "logps" in ref.tensors and "logps" in tensors:
        overrides["logps"] = _beside_trainer(step, "logps", ref.tensors["logps"])
        if "old_logps" not in tensors:
            overrides["old_logps"] = overrides["logps"]
    if "ref_logps" in ref.tensors:
        overrides["ref_logps"] = _beside_trainer(step, "ref_logps", ref.tensors["ref_logps"])
    if "logps" not in tensors and "logps" not in overrides:
        return findings
    # Where every upstream tensor the end-to-end pass would replace already matched the reference within
    # tolerance (stage-isolated), the end-to-end reference equals the isolated one up to that tolerance:
    # reuse it instead of a second float64 forward + backward (the e2e findings then repeat the isolated ones).
    isolated_by_id = {f.check_id: f for f in upstream}  # (the last finding of an id, as a dict of verdicts)
    isolated = ref.notes.get("isolated_downstream")
    reuse = isolated is not None
    for name in overrides if reuse else ():  # (a loop: no generator and verdict call per name)
        if name != "old_logps":
            upstream_finding = isolated_by_id.get(_UPSTREAM_CHECKS.get(name, ""))
            if upstream_finding is None or upstream_finding.verdict is not Verdict.PASS:
                reuse = False
                break
    if reuse:
        down = isolated
    else:
        try:
            down = reference_downstream(step, spec, **overrides)
        except InputError:
            return findings
    if down is None:
        return findings
    ref.e2e.update(advantages=ref_adv, **{k: v for k, v in down.items() if k != "loss_mask"})
    comparisons: list[Comparison] = []
    planned: list[Comparison | Finding] = []
    for name, check_id, what in (
        ("per_token_loss", "e2e.per_token_loss", "end-to-end per-token loss"),
        ("loss", "e2e.loss", "end-to-end loss (reference from the rewards onward)"),
        ("logps_grad", "e2e.logps_grad", "end-to-end ∂loss/∂logps"),
    ):
        if name not in tensors:
            continue
        stage = "loss" if name != "logps_grad" else "grad"
        tolerance = policy.for_check(check_id, name, computed_dtype(step, name))
        if reuse:  # the isolated finding relabelled (no comparison built for it)
            repeated = _repeated(check_id, stage, name, what, tolerance, isolated_by_id)
            if repeated is not None:
                planned.append(repeated)
                continue
        comparison = Comparison(
            check_id=check_id,
            stage=stage,
            name=name,
            what=what,
            trainer=step[name],
            reference=down[name],
            reference_same_precision=None,
            tolerance=tolerance,
        )
        planned.append(comparison)
        # compared afresh: its mask and same-precision reference are needed only now
        comparison.reference_same_precision = same_precision_reference(down[name], step, name)
        if name == "per_token_loss":
            comparison.mask = down["loss_mask"].bool()
        elif name == "logps_grad":
            decided = decided_clip_branch(down, spec, computed_dtype(step, "logps"))
            comparison.mask = decided.expand_as(down["loss_mask"])
        comparisons.append(comparison)
    computed = iter(compare_tensors(comparisons, ctx) if comparisons else ())
    for item in planned:
        finding = next(computed) if isinstance(item, Comparison) else item
        finding.details["end_to_end"] = True
        finding.details["reused_isolated_reference"] = reuse
        findings.append(finding)
    return findings


# the upstream tensor the end-to-end pass replaces -> the stage-isolated check that compared it
_UPSTREAM_CHECKS = {"advantages": "advantages.values", "logps": "logps.model", "ref_logps": "logps.ref_model"}


def _beside_trainer(step: TraceStep, name: str, own: torch.Tensor) -> torch.Tensor:
    """The reference's own log-probs where its forward pass ran, the trainer's ``name`` on the rows it did not
    run (a row subset: :func:`~grpo_check.stepref.forward.forward_row_mask`)."""
    rows = forward_row_mask(step)
    if rows is None or not step.has(name) or step[name].shape != own.shape or own.dim() != 2:
        return own
    return torch.where(rows.to(own.device).unsqueeze(1), own, as_f64(step[name]).to(own.dtype))


def repeat_isolated(comparison: Comparison, isolated_by_id: Mapping[str, Finding]) -> Finding | None:
    """With the isolated reference reused, an end-to-end comparison is the isolated one again (same trainer
    tensor, same reference, same mask): a passing isolated finding relabelled, instead of a second pass
    over the tensors. ``None`` (compare afresh) unless it passed under the same tolerance."""
    return _repeated(
        comparison.check_id,
        comparison.stage,
        comparison.name,
        comparison.what,
        comparison.tolerance,
        isolated_by_id,
    )


def _repeated(
    check_id: str,
    stage: str,
    name: str,
    what: str,
    tolerance: Tolerance,
    isolated_by_id: Mapping[str, Finding],
) -> Finding | None:
    """:func:`repeat_isolated` of the comparison these fields describe."""
    isolated_id, isolated_label = ISOLATED_LOSS_CHECKS[name]
    isolated = isolated_by_id.get(isolated_id)
    if (
        isolated is None
        or isolated.verdict is not Verdict.PASS
        or isolated.details.get("tolerance") != tolerance.to_dict()
        or not isolated.explanation.startswith(f"{isolated_label} matches the reference:")
    ):
        return None
    return Finding(  # dataclasses.replace(isolated, ...) spelled out: it runs for every checked step
        check_id=check_id,
        stage=stage,
        verdict=isolated.verdict,
        figure=isolated.figure,
        tolerance=isolated.tolerance,
        where=isolated.where,
        explanation=what + isolated.explanation[len(isolated_label) :],
        likely_cause=isolated.likely_cause,
        fix=isolated.fix,
        catalog_id=isolated.catalog_id,
        kind=isolated.kind,
        details=dict(isolated.details),
    )
