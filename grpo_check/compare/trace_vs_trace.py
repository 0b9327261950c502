"""Trace vs trace: compare two captured runs of the same batches (e.g. two trainer versions, GAS=1 vs GAS=4,
a fused kernel path vs the plain one) tensor by tensor, under the same tolerance policy.

Steps are matched by (step, micro_batch, rank); every float tensor both traces captured is compared in the
stage it belongs to. A difference that is a constant factor is called out (normalisers, bug-catalog #4/#30).

Example::

    >>> from grpo_check.compare.synthetic import make_trace
    >>> from grpo_check.compare import compare
    >>> a, b = make_trace(steps=1), make_trace(steps=1)
    >>> b.steps[0].tensors["logps_grad"] = b.steps[0]["logps_grad"] * 2
    >>> result = compare(a, against=b)
    >>> [(f.check_id, f.verdict.value) for f in result.failures]
    [('trace.logps_grad', 'fail')]
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from grpo_check.compare.tensor_diff import compare_tensor
from grpo_check.compare.tolerances import TolerancePolicy
from grpo_check.config import GRPOSpec
from grpo_check.diagnose import constant_factor
from grpo_check.findings import Finding, Verdict
from grpo_check.stepref.inputs import step_context
from grpo_check.trace.model import TENSOR_STAGE, Trace, TraceStep

_SKIP = {"prompt_ids", "completion_ids", "group_index", "prompt_mask"}


def _key(step: TraceStep, index: int) -> tuple:
    """(step, micro-batch, rank, scope): a TRL trace holds a generation step and micro-batch 0 under the same
    (step, micro-batch, rank); the scope tells them apart."""
    meta = step.meta
    if meta.get("step") is None:
        return ("index", index)
    return (meta.get("step"), meta.get("micro_batch") or 0, meta.get("rank") or 0, meta.get("scope") or "")


def compare_traces(
    trace: Trace,
    other: Trace,
    spec: GRPOSpec,
    policy: TolerancePolicy,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> list[Finding]:
    """Findings for every tensor both traces captured, step by step (``trace`` is held against ``other``)."""
    findings: list[Finding] = []
    theirs = {_key(s, i): s for i, s in enumerate(other.steps)}
    ours = {_key(s, i): s for i, s in enumerate(trace.steps)}
    total = len(trace.steps)
    for index, step in enumerate(trace.steps):
        key = _key(step, index)
        match = theirs.get(key)
        ctx = step_context(step, spec)
        if match is None:
            findings.append(
                Finding(
                    check_id="trace.step_missing",
                    stage="run",
                    verdict=Verdict.WARN,
                    where=ctx.where(),
                    kind="compare",
                    explanation=f"step {key} is in the trace but not in the trace it is compared against",
                )
            )
            continue
        for name in sorted(set(step.tensors) ^ set(match.tensors)):  # what only one of the two holds
            if name in _SKIP:
                continue
            where = "the trace compared against" if name in match.tensors else "this trace"
            findings.append(
                Finding(
                    check_id=f"trace.{name}",
                    stage=TENSOR_STAGE.get(name, "run"),
                    verdict=Verdict.NOT_CAPTURED,
                    where=ctx.where(),
                    kind="compare",
                    explanation=f"{name}: captured only in {where}, so it is not compared",
                    details={"missing": [name]},
                )
            )
        for name in sorted(set(step.tensors) & set(match.tensors)):
            if name in _SKIP:
                continue
            mine, yours = step[name], match[name]
            if not (isinstance(mine, torch.Tensor) and isinstance(yours, torch.Tensor)):
                continue
            if mine.shape != yours.shape and mine.numel() != yours.numel():
                findings.append(
                    Finding(
                        check_id=f"trace.{name}",
                        stage=TENSOR_STAGE.get(name, "run"),
                        verdict=Verdict.FAIL,
                        where=ctx.where(),
                        kind="compare",
                        explanation=f"{name}: shape {tuple(mine.shape)} vs {tuple(yours.shape)} in the other trace",
                    )
                )
                continue
            if mine.dtype in (torch.bool, torch.int64, torch.int32, torch.long):
                mine, yours = mine.double(), yours.double()
            dtype = str(mine.dtype).removeprefix("torch.")
            quantity = name if name != "rewards_per_func" else "rewards"
            mask = None if name != "logps_grad" else torch.ones_like(mine, dtype=torch.bool)
            finding = compare_tensor(
                check_id=f"trace.{name}",
                stage=TENSOR_STAGE.get(name, "run"),
                name=name,
                what=f"{name} (vs the other trace)",
                trainer=mine,
                reference=yours.reshape(mine.shape),
                tolerance=policy.for_check(f"trace.{name}", quantity, dtype),
                ctx=ctx,
                mask=mask,
            )
            if finding.verdict in (Verdict.FAIL, Verdict.WARN):
                k = constant_factor(
                    mine,
                    yours.reshape(mine.shape),
                    ctx.token_mask(mine.double()) if mine.dim() == 2 else None,
                )
                if k is not None and abs(k - 1.0) > 1e-3:
                    finding.details["constant_factor"] = k
                    finding.likely_cause = (
                        f"{name} differs by a constant factor {k:.4g} between the traces: a normaliser differs "
                        "(gradient accumulation, micro-batching, number of processes) (bug-catalog #4)"
                    )
                    finding.catalog_id = "4"
            findings.append(finding)
        if progress is not None:
            progress(index + 1, total)
    for key in theirs:
        if key not in ours:
            findings.append(
                Finding(
                    check_id="trace.step_missing",
                    stage="run",
                    verdict=Verdict.WARN,
                    kind="compare",
                    explanation=f"step {key} is only in the trace compared against",
                )
            )
    return findings
