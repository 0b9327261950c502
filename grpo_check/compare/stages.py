"""One comparison per stage, each fed the trainer's *own* upstream tensors (stage isolation).

* ``rewards``    trainer ``rewards`` vs Σ_k w_k R_ik of the trainer's ``rewards_per_func``
* ``advantages`` trainer ``advantages`` vs the reference advantages of the trainer's rewards
* ``logps``      trainer ``logps``/``ref_logps`` vs the reference's own forward pass (``model=``/``ref_model=``);
                 sampler-vs-trainer distribution metrics when ``sampler_logps`` was captured
* ``ratio``      trainer ``ratio``/``clipped_ratio``/clip masks vs the reference from the trainer's logps
* ``kl``         trainer ``kl`` vs the reference estimator on the trainer's logps and ref_logps
* ``loss``       trainer ``per_token_loss``/``loss`` vs the reference objective on the trainer's logps,
                 old_logps, ref_logps and advantages
* ``grad``       trainer ``logps_grad`` vs float64 autograd ∂loss/∂logps of that reference loss

An end-to-end pass (``e2e.*`` checks) recomputes everything from the rewards with the reference's own
advantages (and, given a model, its own log-probs) and is reported separately.

:func:`compare_stages` runs them in order; each job has its module:
:mod:`~grpo_check.stepref.forward` (the reference's own forward passes),
:mod:`~grpo_check.stepref.inputs` (what the reference is fed: coordinates, precisions, reference
tensors from the trainer's upstream), :mod:`~grpo_check.compare.stage_findings` (the findings of each stage)
and :mod:`~grpo_check.compare.end_to_end` (the ``e2e.*`` pass). Their names are importable from here too.

Example::

    >>> import torch
    >>> from grpo_check.config import GRPOSpec
    >>> from grpo_check.trace.model import TraceStep
    >>> from grpo_check.compare.stages import compare_stages
    >>> from grpo_check.compare.tolerances import TolerancePolicy
    >>> step = TraceStep(tensors={"rewards_per_func": torch.tensor([[1.0], [0.0]]),
    ...                           "group_index": torch.tensor([0, 0]),
    ...                           "advantages": torch.tensor([0.7070, -0.7070])}, meta={"step": 0})
    >>> findings, _ = compare_stages(step, GRPOSpec(num_generations=2), TolerancePolicy())
    >>> [(f.check_id, f.verdict.value) for f in findings if f.check_id == "advantages.values"]
    [('advantages.values', 'pass')]
"""

from __future__ import annotations

from typing import Any

from grpo_check.compare.end_to_end import end_to_end_findings, repeat_isolated
from grpo_check.compare.stage_findings import (
    ISOLATED_LOSS_CHECKS,
    advantage_findings,
    downstream_findings,
    logps_findings,
)
from grpo_check.compare.tensor_diff import Comparison, StepContext
from grpo_check.compare.tolerances import TolerancePolicy
from grpo_check.config import GRPOSpec
from grpo_check.findings import Finding
from grpo_check.stepref.forward import (
    KnownLogps,
    model_logits,
    model_logps,
    model_logps_shifted,
    set_training,
    window_known_logps,
)
from grpo_check.stepref.inputs import (
    StageReference,
    computed_dtype,
    reference_advantages,
    reference_downstream,
    same_precision_reference,
    step_context,
)
from grpo_check.trace.model import TraceStep

# the names this module held before it was split, importable from here as before
_dtype = computed_dtype
_same_precision = same_precision_reference

__all__ = [
    "ISOLATED_LOSS_CHECKS",
    "Comparison",
    "KnownLogps",
    "StageReference",
    "StepContext",
    "advantage_findings",
    "compare_stages",
    "computed_dtype",
    "downstream_findings",
    "end_to_end_findings",
    "logps_findings",
    "model_logits",
    "model_logps",
    "model_logps_shifted",
    "reference_advantages",
    "reference_downstream",
    "repeat_isolated",
    "same_precision_reference",
    "set_training",
    "step_context",
    "window_known_logps",
]


def compare_stages(
    step: TraceStep,
    spec: GRPOSpec,
    policy: TolerancePolicy,
    *,
    model: Any = None,
    ref_model: Any = None,
    end_to_end: bool = True,
) -> tuple[list[Finding], StageReference]:
    """Every stage comparison for one step; returns the findings and the reference tensors used."""
    ctx = step_context(step, spec)
    ref = StageReference()
    findings: list[Finding] = []
    findings += advantage_findings(step, spec, policy, ctx, ref)
    findings += logps_findings(step, spec, policy, ctx, ref, model, ref_model)
    findings += downstream_findings(step, spec, policy, ctx, ref)
    if end_to_end:
        findings += end_to_end_findings(step, spec, policy, ctx, ref, findings)
    for finding in findings:
        figure = finding.figure
        if type(figure) is float:  # (most figures: no isinstance call)
            if figure != figure:  # NaN
                finding.figure = None
        elif figure is not None and isinstance(figure, float) and figure != figure:  # a float subclass's NaN
            finding.figure = None
    return findings, ref
