"""Re-derivation of the loss stage's normaliser: N, the number of loss tokens the trainer divides by."""

from __future__ import annotations

import torch

from grpo_check.config import GRPOSpec
from grpo_check.findings import Finding, Verdict
from grpo_check.rederive.checks_common import _finding, _not_applicable, _not_captured, _register
from grpo_check.rederive.derive import (
    completion_ends,
    uses_global_token_count,
)
from grpo_check.rederive.inputs import (
    eos_ids_of,
    generation_loss_tokens,
    tensor_or_none,
    whole,
)
from grpo_check.trace.model import Trace, TraceStep


# ------------------------------------------------------------------------------------------ loss: N
@_register(
    "num_items_in_batch",
    "loss",
    "num_items_in_batch (N of the token-mean normaliser) equals Σ completion_mask·tool_mask over the whole "
    "generation batch and every process",
    "meta num_items_in_batch + the generation batch's loss masks (meta generation_loss_tokens, or every "
    "micro-batch of the generation in the trace)",
)
def num_items_check(step: TraceStep, spec: GRPOSpec, trace: Trace | None) -> Finding | None:
    check_id = "rederive.num_items_in_batch"
    if step.meta.get("scope") == "generation" and not step.has("completion_mask"):
        return _not_applicable(
            check_id, step, "a generation step (the count is checked on its micro-batches)"
        )
    recorded = step.meta.get("num_items_in_batch")
    if recorded is None:
        if not uses_global_token_count(spec):
            return _not_applicable(check_id, step, f"loss_type {spec.loss_type!r} does not divide by N")
        return _not_captured(check_id, step, "meta num_items_in_batch")
    derived = generation_loss_tokens(step, trace)
    if derived.count is None:
        if not uses_global_token_count(spec):
            return _not_applicable(check_id, step, f"loss_type {spec.loss_type!r} does not divide by N")
        return _finding(
            check_id, step, Verdict.NOT_CAPTURED, f"not captured: cannot re-derive N: {derived.source}"
        )
    given = float(recorded)
    error = abs(given - derived.count)
    used = uses_global_token_count(spec)
    where_text = f"N = {given:g} given, {derived.count:g} re-derived from {derived.source}"
    if error <= 0.5:
        return _finding(
            check_id,
            step,
            Verdict.PASS,
            f"{where_text}" + ("" if used else f" (unused by loss_type {spec.loss_type!r})"),
            figure=error,
            tolerance=0.5,
            derived=derived.count,
        )
    cause = _count_cause(step, trace, given, derived.count)
    return _finding(
        check_id,
        step,
        Verdict.FAIL if used else Verdict.WARN,
        f"num_items_in_batch differs from the loss tokens of the generation batch: {where_text}; off by "
        f"{given - derived.count:+g} ({(given - derived.count) / max(derived.count, 1.0):+.1%})"
        + (
            "" if used else f"; loss_type {spec.loss_type!r} does not divide by it, so the loss is unaffected"
        ),
        figure=error,
        tolerance=0.5,
        catalog_id="4",
        likely_cause=cause,
        fix="N = accelerator.gather((completion_mask * tool_mask).sum()).sum() with the masks AFTER truncated "
        "rows and tool outputs are zeroed — the same mask the loss multiplies by",
        derived=derived.count,
        given=given,
    )


def _count_cause(step: TraceStep, trace: Trace | None, given: float, derived: float) -> str:
    extra = given - derived
    masked = _masked_tokens(step, trace)
    processes = whole(step.meta.get("num_processes"))
    if masked is not None and masked["truncated"] > 0 and abs(extra - masked["truncated"]) <= 0.5:
        return (
            f"the normaliser counts the {masked['truncated']:g} tokens of truncated completions that "
            "mask_truncated_completions removed from the loss"
        )
    if masked is not None and masked["tool"] > 0 and abs(extra - masked["tool"]) <= 0.5:
        return f"the normaliser counts the {masked['tool']:g} tool-output tokens that tool_mask removes from the loss"
    if masked is not None and masked["after_mask"] > 0 and abs(extra - masked["after_mask"]) <= 0.5:
        return f"the normaliser counts {masked['after_mask']:g} masked tokens (padding or tokens after EOS)"
    if processes is not None and processes > 1 and abs(given * processes - derived) <= 0.5:
        return "the token count was not gathered across processes (one process's count used as the global N)"
    if extra > 0:
        return "the normaliser counts tokens the loss mask excludes"
    return "the normaliser misses tokens the loss trains on"


def _masked_tokens(step: TraceStep, trace: Trace | None) -> dict[str, float] | None:
    """Over the generation batch (as far as the trace holds it): tokens of truncated rows a zeroed mask drops,
    tool-output tokens, and other positions outside the mask (padding)."""
    steps = [step]
    generation = whole(step.meta.get("generation"))
    if trace is not None and generation is not None:
        from grpo_check.rederive.inputs import _index

        steps = _index(trace).micro_batches.get(generation, [step])
    seen: set[int] = set()
    totals = {"truncated": 0.0, "tool": 0.0, "after_mask": 0.0}
    eos = eos_ids_of(step, trace)
    for micro in steps:
        ids, mask = tensor_or_none(micro, "completion_ids"), tensor_or_none(micro, "completion_mask")
        if ids is None or mask is None or ids.shape != mask.shape or eos is None:
            return None
        rows = micro.meta.get("global_rows") or list(range(ids.shape[0]))
        tool = tensor_or_none(micro, "tool_mask")
        ends = completion_ends(ids, eos.ends, whole(micro.meta.get("pad_token_id")), tool)
        m = mask.detach().to(torch.float64)
        for index, row in enumerate(rows):
            if int(row) in seen:
                continue
            seen.add(int(row))
            if bool(ends.truncated[index]) and float(m[index].sum()) == 0:
                totals["truncated"] += float(ends.lengths[index])
            if tool is not None:
                totals["tool"] += float((m[index] * (1 - tool[index].detach().to(torch.float64))).sum())
            totals["after_mask"] += float(ids.shape[1] - m[index].sum())
    return totals
