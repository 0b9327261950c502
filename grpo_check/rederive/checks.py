"""Re-derivation checks: each recomputes, from the batch, one quantity the loss receives and holds the
trainer's value to it. Check ids are ``rederive.<name>``; each finding lives in the stage of the quantity.

A check whose inputs were not recorded says so (``not_captured`` or ``inconclusive`` with the reason),
never ``pass``. A check that does not apply to this step (no unscorable row, no tool token, a loss type that
does not use N) reports nothing for it: a step is never "checked" by a check that had nothing to verify.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from grpo_check.config import GRPOSpec
from grpo_check.findings import Finding, Verdict
from grpo_check.rederive.derive import (
    completion_ends,
    expected_completion_mask,
    loss_mask,
    loss_tokens_per_row,
    optimizer_steps_between,
    unscorable,
    uses_global_token_count,
)
from grpo_check.rederive.inputs import (
    EOS_SOURCES_KEY,
    eos_ids_of,
    generation_loss_tokens,
    generation_step_of,
    tensor_or_none,
    whole,
)
from grpo_check.trace.model import Trace, TraceStep

FAMILY = "re-derivations"
"""The check family these findings belong to (``details["family"]``)."""

CheckFunction = Callable[[TraceStep, GRPOSpec, "Trace | None"], "Finding | None"]


@dataclasses.dataclass(frozen=True)
class Rederivation:
    """One registered re-derivation: id ``rederive.<name>``, the stage its quantity lives in, what it needs."""

    id: str
    stage: str
    description: str
    needs: str
    function: CheckFunction = dataclasses.field(repr=False, compare=False)


REDERIVATIONS: dict[str, Rederivation] = {}


def _register(
    name: str, stage: str, description: str, needs: str
) -> Callable[[CheckFunction], CheckFunction]:
    def decorate(function: CheckFunction) -> CheckFunction:
        check_id = f"rederive.{name}"
        REDERIVATIONS[check_id] = Rederivation(check_id, stage, description, needs, function)
        return function

    return decorate


def _where(step: TraceStep, row: int | None = None, token: int | None = None):
    from grpo_check.invariants.registry import where_in_step

    return where_in_step(step, row, token)


def _finding(
    check_id: str,
    step: TraceStep,
    verdict: Verdict,
    explanation: str,
    *,
    figure: float | None = None,
    tolerance: float | None = None,
    row: int | None = None,
    token: int | None = None,
    likely_cause: str | None = None,
    fix: str | None = None,
    catalog_id: str | None = None,
    **details: Any,
) -> Finding:
    stage = REDERIVATIONS[check_id].stage
    failing = verdict in (Verdict.FAIL, Verdict.WARN)
    return Finding(
        check_id=check_id,
        stage=stage,
        verdict=verdict,
        figure=figure,
        tolerance=tolerance,
        where=_where(step, row, token),
        explanation=explanation,
        likely_cause=likely_cause if failing else None,
        fix=fix if failing else None,
        catalog_id=catalog_id if failing else None,
        kind="rederive",
        details={"family": FAMILY, **details},
    )


def _not_captured(check_id: str, step: TraceStep, missing: str) -> Finding:
    needs = REDERIVATIONS[check_id].needs
    return _finding(
        check_id,
        step,
        Verdict.NOT_CAPTURED,
        f"not captured: needs {needs} (missing {missing})",
        missing=[missing],
    )


def _not_applicable(check_id: str, step: TraceStep, reason: str) -> None:
    """Nothing to verify on this step (``reason`` documents why): no finding, so that a step a check does
    not apply to never reads as checked."""
    return None


# ------------------------------------------------------------------------------------------ batch: ends
@_register(
    "completion_ends",
    "batch",
    "completion_mask is the prefix up to the first id of ANY EOS source (tokenizer, generation config), or the "
    "whole row when truncated; truncated rows fully masked with mask_truncated_completions",
    "completion_ids + completion_mask + EOS ids (meta eos_token_id_sources / eos_token_ids)",
)
def completion_ends_check(step: TraceStep, spec: GRPOSpec, trace: Trace | None) -> Finding | None:
    check_id = "rederive.completion_ends"
    ids, mask = tensor_or_none(step, "completion_ids"), tensor_or_none(step, "completion_mask")
    if ids is None or mask is None:
        return _not_captured(check_id, step, "completion_ids" if ids is None else "completion_mask")
    eos = eos_ids_of(step, trace)
    if eos is None:
        return _not_captured(check_id, step, f"meta {EOS_SOURCES_KEY} / eos_token_ids")
    if ids.dim() != 2 or ids.shape != mask.shape:
        return _finding(
            check_id,
            step,
            Verdict.INCONCLUSIVE,
            f"completion_ids {tuple(ids.shape)} and completion_mask {tuple(mask.shape)} are not the same (B, T)",
        )
    pad = step.meta.get("pad_token_id")
    pad = whole(pad)
    all_ids = eos.ends
    ends = completion_ends(ids, all_ids, pad, tensor_or_none(step, "tool_mask"))
    expected = expected_completion_mask(ends, ids.shape[1], mask_truncated=spec.mask_truncated_completions)
    actual = mask.detach().bool().cpu()
    mismatch = actual != expected
    # A row without EOS followed by pad ids is ambiguous from the ids alone: the pads may be padding (a
    # sampler that stopped on a stop string) or pad ids the policy sampled before the length limit. Any
    # prefix mask from its last non-pad token to the full width fits (or none, with mask_truncated_completions).
    width = ids.shape[1]
    ambiguous = ends.truncated & (ends.lengths < width)
    if bool(ambiguous.any()):
        positions = torch.arange(width).expand(ids.shape[0], width)
        actual_len = actual.sum(1)
        prefix = (actual == (positions < actual_len.unsqueeze(1))).all(1)
        fits = prefix & (actual_len >= ends.lengths)
        if spec.mask_truncated_completions:
            fits = fits | (actual_len == 0)
        mismatch = mismatch & ~(ambiguous & fits).unsqueeze(1)
    sources = {name: list(values) for name, values in eos.by_source.items()}
    truncated_rows = int(ends.truncated.sum())
    recorded_truncated = tensor_or_none(step, "truncated")
    if recorded_truncated is not None and recorded_truncated.numel() == ids.shape[0]:
        flag_mismatch = recorded_truncated.detach().bool().reshape(-1).cpu() != ends.truncated
        flag_mismatch &= ~(ends.truncated & (ends.lengths < ids.shape[1]))  # pad tail: either reading fits
        if bool(flag_mismatch.any()):
            row = int(flag_mismatch.int().argmax())
            return _finding(
                check_id,
                step,
                Verdict.FAIL,
                f"{int(flag_mismatch.sum())} row(s) flagged truncated differently from their ids: row {row} is "
                f"recorded truncated={bool(recorded_truncated.reshape(-1)[row])}, its ids say "
                f"{bool(ends.truncated[row])} (EOS ids {all_ids})",
                figure=float(flag_mismatch.sum()),
                tolerance=0.0,
                row=row,
                catalog_id="11",
                likely_cause="truncation decided with fewer EOS ids than generation stops at (a secondary EOS "
                "from generation_config ignored) or from the padded row",
                fix="a row is truncated when none of its ids is any EOS id of the tokenizer or the generation "
                "config",
                eos_token_id_sources=sources,
            )
    if not bool(mismatch.any()):
        verdict, note = Verdict.PASS, ""
        if (
            not eos.independent
            and trace is not None
            and str(trace.manifest.get("trainer", "")).startswith("trl.")
        ):
            verdict = Verdict.INCONCLUSIVE
            note = (
                "; only the trainer's EOS ids were recorded, so a secondary EOS of the generation config that the "
                f"trainer ignores cannot be ruled out (record meta {EOS_SOURCES_KEY})"
            )
        return _finding(
            check_id,
            step,
            verdict,
            f"all {ids.shape[0]} completion_mask rows end at the first EOS of {all_ids} or are truncated "
            f"({truncated_rows} truncated"
            + (", masked" if spec.mask_truncated_completions and truncated_rows else "")
            + f"){note}",
            figure=0.0,
            tolerance=0.0,
            eos_token_id_sources=sources,
            truncated_rows=truncated_rows,
        )
    bad_rows = mismatch.any(1)
    row = int(bad_rows.int().argmax())
    token = int(mismatch[row].int().argmax())
    mask_len, expected_len = int(actual[row].sum()), int(expected[row].sum())
    cause, fix = _ends_cause(row, ends, eos, spec, mask_len, expected_len)
    return _finding(
        check_id,
        step,
        Verdict.FAIL,
        f"completion_mask differs from the mask re-derived from the ids and every EOS id {all_ids} on "
        f"{int(mismatch.sum())} token(s) of {int(bad_rows.sum())} row(s); row {row}: mask covers {mask_len} "
        f"token(s), expected {expected_len}"
        + (
            " (truncated row)"
            if bool(ends.truncated[row])
            else f" (first EOS at token {int(ends.first_eos[row])})"
        ),
        figure=float(bad_rows.sum()),
        tolerance=0.0,
        row=row,
        token=token,
        catalog_id="11",
        likely_cause=cause,
        fix=fix,
        eos_token_id_sources=sources,
        rows=bad_rows.nonzero().reshape(-1)[:20].tolist(),
    )


def _ends_cause(
    row: int, ends: Any, eos: Any, spec: GRPOSpec, mask_len: int, expected_len: int
) -> tuple[str, str]:
    truncated = bool(ends.truncated[row])
    if truncated and spec.mask_truncated_completions and mask_len > 0:
        return (
            "a truncated completion (no EOS) stays in the loss although mask_truncated_completions is on",
            "zero completion_mask (and tool_mask) of rows with no EOS id when mask_truncated_completions is set",
        )
    if truncated and not spec.mask_truncated_completions and mask_len == 0:
        return (
            "a truncated completion is masked out although mask_truncated_completions is off",
            "mask truncated rows only when mask_truncated_completions is set",
        )
    if not truncated and mask_len > expected_len:
        eos_id = int(ends.eos_id[row])
        trainer_ids = eos.by_source.get("trainer", [])
        tokenizer_ids = eos.by_source.get("tokenizer", [])
        if eos_id not in trainer_ids or (tokenizer_ids and eos_id not in tokenizer_ids):
            origin = [name for name, ids in eos.by_source.items() if eos_id in ids]
            return (
                f"a secondary EOS id {eos_id} (from {', '.join(origin) or 'the recorded EOS ids'}) is not treated "
                "as a completion end when masking: the tokens generated after it are trained on",
                "end completions at the first id of ANY EOS: the tokenizer's eos_token_id and every id of "
                "model.generation_config.eos_token_id",
            )
        return (
            "tokens after the first EOS are counted in the mask",
            "mask = positions <= index of the first EOS (any EOS id)",
        )
    if truncated and mask_len > expected_len:
        return (
            f"the mask runs over {mask_len - expected_len} padding token(s) after the completion's last generated "
            "token: the completion ended at an id the masking does not treat as EOS (a secondary EOS of the "
            "generation config ignored?)",
            "end completions at the first id of ANY EOS: the tokenizer's eos_token_id and every id of "
            "model.generation_config.eos_token_id; never extend the mask over padding",
        )
    if not truncated and mask_len == expected_len - 1:
        return (
            "the EOS token itself is masked out (mask built as ids != pad with pad == eos)",
            "mask = positions <= index of the first EOS; never ids != pad_token_id when pad == eos",
        )
    return (
        "the completion mask ends before the first EOS",
        "mask = positions <= index of the first EOS (any EOS id)",
    )


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


# ------------------------------------------------------------------------------------------ ratio: old logps
@_register(
    "old_logps_required",
    "ratio",
    "after an optimizer step between generating a batch and training on it, the loss received the old "
    "(generating) policy's log-probs: ρ is not ≡ 1",
    "meta step + the generation's optimizer step (meta generation_step, or the trace's generation step) + "
    "logps (old_logps or ratio when passed)",
)
def old_logps_check(step: TraceStep, spec: GRPOSpec, trace: Trace | None) -> Finding | None:
    check_id = "rederive.old_logps_required"
    if step.meta.get("scope") == "generation":
        return _not_applicable(check_id, step, "a generation step (no loss computed on it)")
    use_step = whole(step.meta.get("step"))
    generated = generation_step_of(step, trace)
    if use_step is None:
        return _not_captured(check_id, step, "meta step")
    if generated is None:
        return _not_captured(check_id, step, "meta generation_step (or the generation step in the trace)")
    between = optimizer_steps_between(generated, use_step)
    if between < 0:
        return _finding(
            check_id,
            step,
            Verdict.INCONCLUSIVE,
            f"the batch is recorded as generated at optimizer step {generated}, after its use at {use_step}",
        )
    if between == 0:
        return _finding(
            check_id,
            step,
            Verdict.PASS,
            f"generated and trained on at optimizer step {use_step}: no update in between, ρ ≡ 1 is expected",
            figure=0.0,
            tolerance=0.0,
            optimizer_steps_between=0,
        )
    if step.meta.get("policy_changed_since_generation") is False:
        return _finding(
            check_id,
            step,
            Verdict.PASS,
            f"{between} optimizer step(s) between generation and use left every parameter as it was (a zero "
            "update): ρ ≡ 1 is expected",
            figure=0.0,
            tolerance=0.0,
            optimizer_steps_between=between,
        )
    logps, old = tensor_or_none(step, "logps"), tensor_or_none(step, "old_logps")
    ratio = tensor_or_none(step, "ratio")
    mask = tensor_or_none(step, "completion_mask")
    cause = (
        "old log-probs skipped: the loss takes old = logps.detach() (ρ ≡ 1, clipping inert) although the batch "
        "was generated before an optimizer step"
    )
    fix = (
        "compute old_per_token_logps at generation whenever a generation batch is trained on across an optimizer "
        "step (num_iterations > 1, or gradient_accumulation_steps not a multiple of steps_per_generation × "
        "num_iterations)"
    )
    head = f"{between} optimizer step(s) between generation (step {generated}) and use (step {use_step})"
    if old is not None and logps is not None and old.shape == logps.shape:
        valid = (
            torch.ones_like(logps, dtype=torch.bool)
            if mask is None or mask.shape != logps.shape
            else mask.bool()
        )
        if not bool(valid.any()):
            return _finding(check_id, step, Verdict.INCONCLUSIVE, f"{head}; no loss token to compare")
        differ = (logps.detach() != old.detach()) & valid
        if bool(differ.any()):
            moved = float((logps.detach() - old.detach()).abs()[valid].max())
            return _finding(
                check_id,
                step,
                Verdict.PASS,
                f"{head}; old_logps differ from logps on {int(differ.sum())} of {int(valid.sum())} token(s) "
                f"(max |Δ| = {moved:.3g})",
                figure=moved,
                optimizer_steps_between=between,
            )
        moved = _policy_moved(step, trace)
        if moved is None:  # bitwise equal is also what a policy that did not move gives (lr 0, zero gradient)
            return _finding(
                check_id,
                step,
                Verdict.WARN,
                f"{head}, yet old_logps equal logps bitwise on all {int(valid.sum())} loss token(s): ρ ≡ 1 "
                "(legitimate only if the policy did not move: learning rate 0 or zero gradients; the trace holds "
                "no earlier log-probs of these rows to tell)",
                figure=0.0,
                tolerance=0.0,
                catalog_id="17",
                likely_cause=cause,
                fix=fix,
                optimizer_steps_between=between,
            )
        return _finding(
            check_id,
            step,
            Verdict.FAIL,
            f"{head}, yet old_logps equal logps bitwise on all {int(valid.sum())} loss token(s): ρ ≡ 1, while "
            f"the policy moved ({moved[0]})",
            figure=moved[1],
            tolerance=0.0,
            catalog_id="17",
            likely_cause=cause,
            fix=fix,
            optimizer_steps_between=between,
        )
    if ratio is not None:
        deviation = float((ratio.detach().double() - 1).abs().max()) if ratio.numel() else 0.0
        if deviation > 0:
            return _finding(
                check_id,
                step,
                Verdict.PASS,
                f"{head}; ρ ≠ 1 (max |ρ − 1| = {deviation:.3g})",
                figure=deviation,
            )
        moved = _policy_moved(step, trace)
        return _finding(
            check_id,
            step,
            Verdict.WARN if moved is None else Verdict.FAIL,
            f"{head}, yet ρ ≡ 1 on every token"
            + (
                " (legitimate only if the policy did not move; the trace holds no earlier log-probs of these rows)"
                if moved is None
                else f", while the policy moved ({moved[0]})"
            ),
            figure=0.0,
            tolerance=0.0,
            catalog_id="17",
            likely_cause=cause,
            fix=fix,
            optimizer_steps_between=between,
        )
    if logps is None:
        return _not_captured(check_id, step, "logps (with old_logps or ratio)")
    return _finding(
        check_id,
        step,
        Verdict.FAIL,
        f"{head}, yet the loss received no old log-probs (old_logps absent: the loss uses logps.detach(), "
        "ρ ≡ 1)",
        figure=float(between),
        tolerance=0.0,
        catalog_id="17",
        likely_cause=cause,
        fix=fix,
        optimizer_steps_between=between,
    )


def _policy_moved(step: TraceStep, trace: Trace | None) -> tuple[str, float] | None:
    """Evidence that the policy changed since the batch was generated, as ``(what shows it, a figure)``: the
    parameters' fingerprint recorded at generation and at use differ (``meta["policy_changed_since_generation"]``),
    or another micro-batch of the same generation, at another optimizer step, holds other log-probs of a row."""
    if step.meta.get("policy_changed_since_generation") is True:
        return "its parameters' fingerprint at use differs from the one at generation", 1.0
    generation, rows, use_step = (
        whole(step.meta.get("generation")),
        step.meta.get("global_rows"),
        step.meta.get("step"),
    )
    logps = tensor_or_none(step, "logps")
    if trace is None or generation is None or not isinstance(rows, list) or logps is None:
        return None
    from grpo_check.rederive.inputs import _index

    here = {int(row): index for index, row in enumerate(rows)}
    for other in _index(trace).micro_batches.get(generation, []):
        other_rows, other_logps = other.meta.get("global_rows"), tensor_or_none(other, "logps")
        if other is step or other.meta.get("step") == use_step or not isinstance(other_rows, list):
            continue
        if other_logps is None or other_logps.shape[1] != logps.shape[1]:
            continue
        for index, row in enumerate(other_rows):
            mine = here.get(int(row))
            if mine is None:
                continue
            delta = float((logps[mine].detach().double() - other_logps[index].detach().double()).abs().max())
            if delta > 0:
                return (
                    f"the same rows' log-probs at optimizer step {other.meta['step']} differ by up to {delta:.3g}",
                    delta,
                )
    return None


# ------------------------------------------------------------------------------------------ loss: tool mask
@_register(
    "tool_tokens_untrained",
    "loss",
    "the loss mask is inside tool_mask: ∂loss/∂logps is exactly 0 on tool-output tokens",
    "tool_mask + logps_grad",
)
def tool_tokens_check(step: TraceStep, spec: GRPOSpec, trace: Trace | None) -> Finding | None:
    check_id = "rederive.tool_tokens_untrained"
    tool, grad = tensor_or_none(step, "tool_mask"), tensor_or_none(step, "logps_grad")
    if tool is None:
        if step.has("completion_ids"):
            return _not_applicable(check_id, step, "no tool_mask (no tool-output tokens recorded)")
        return _not_captured(check_id, step, "tool_mask")
    if grad is None:
        return _not_captured(check_id, step, "logps_grad")
    if tool.shape != grad.shape:
        return _finding(
            check_id,
            step,
            Verdict.INCONCLUSIVE,
            f"tool_mask {tuple(tool.shape)} and logps_grad {tuple(grad.shape)} differ",
        )
    outside = ~tool.detach().bool()
    completion = tensor_or_none(step, "completion_mask")
    if completion is not None and completion.shape == tool.shape:
        outside = outside & completion.detach().bool()  # tool tokens inside the completion
    if not bool(outside.any()):
        return _not_applicable(check_id, step, "no tool-output token in this micro-batch")
    trained = outside & (grad.detach() != 0)
    if not bool(trained.any()):
        return _finding(
            check_id,
            step,
            Verdict.PASS,
            f"∂loss/∂logps is 0 on all {int(outside.sum())} tool-output token(s)",
            figure=0.0,
            tolerance=0.0,
        )
    magnitude = torch.where(trained, grad.detach().abs().double(), 0.0)
    flat = int(magnitude.argmax())
    row, token = divmod(flat, magnitude.shape[1])
    return _finding(
        check_id,
        step,
        Verdict.FAIL,
        f"{int(trained.sum())} of {int(outside.sum())} tool-output token(s) (tool_mask = 0) get a gradient; "
        f"max |∂loss/∂logps| = {float(magnitude.max()):.3g} (allowed 0)",
        figure=float(magnitude.max()),
        tolerance=0.0,
        row=row,
        token=token,
        catalog_id="28",
        likely_cause="tool-output tokens are trained on: the loss mask is completion_mask alone, without tool_mask",
        fix="multiply the loss mask (and its token count) by tool_mask",
    )


# ------------------------------------------------------------------------------------------ advantages: NaN rows
@_register(
    "unscorable_rows",
    "advantages",
    "rows every reward function returned None/NaN for are left out of their group's statistics and get A = 0",
    "rewards_per_func + advantages + group_index",
)
def unscorable_check(step: TraceStep, spec: GRPOSpec, trace: Trace | None) -> Finding | None:
    check_id = "rederive.unscorable_rows"
    for name in ("rewards_per_func", "advantages", "group_index"):
        if tensor_or_none(step, name) is None:
            if name == "rewards_per_func" or step.meta.get("scope") == "generation":
                return _not_captured(check_id, step, name)
            return _not_applicable(
                check_id, step, "a micro-batch without whole groups (checked on generation steps)"
            )
    rewards, advantages = step["rewards_per_func"], step["advantages"].detach().double()
    if advantages.dim() == 2:
        advantages = advantages[:, 0]
    bad = unscorable(rewards)
    if bad.numel() != advantages.numel():
        return _finding(
            check_id, step, Verdict.INCONCLUSIVE, "rewards_per_func and advantages have different rows"
        )
    if not bool(bad.any()):
        return _not_applicable(check_id, step, "no unscorable row")
    from grpo_check.reference.advantages import compute_advantages

    weights = step.get("reward_weights")
    expected = compute_advantages(rewards, step["group_index"], spec, reward_weights=weights).advantages
    expected = expected.to(advantages.dtype)
    groups = step["group_index"].reshape(-1)
    own = torch.where(bad, torch.nan_to_num(advantages.abs(), nan=float("inf")), 0.0)
    if bool((own > 0).any()):
        row = int(own.argmax())
        figure = float(own[row])
        return _finding(
            check_id,
            step,
            Verdict.FAIL,
            f"{int((own > 0).sum())} unscorable row(s) carry a non-zero advantage (row {row}: A = "
            f"{float(advantages[row]):.4g}, expected 0)",
            figure=figure,
            tolerance=0.0,
            row=row,
            catalog_id="8",
            likely_cause="an unscorable (None/NaN) reward is scored 0 and kept in its group",
            fix="mark rows whose every reward is NaN unscorable: rewards NaN, nanmean/nanstd per group, A = 0",
        )
    # scale-free per group (std conventions and ε scale a group's advantages, they do not turn them): the
    # direction of the scorable rows' advantages must be the one re-derived without the unscorable rows
    figure, row, tolerance = 0.0, None, 1e-3
    for group in torch.unique(groups[bad]).tolist():
        rows = ((groups == group) & ~bad).nonzero().reshape(-1)
        given, wanted = advantages[rows], expected[rows]
        scale_given, scale_wanted = float(given.norm()), float(wanted.norm())
        if scale_wanted < 1e-12 and scale_given < 1e-12:
            continue
        if scale_wanted < 1e-12 or scale_given < 1e-12 or not torch.isfinite(given).all():
            error = torch.full_like(given, float("inf"))
        else:
            error = (given / scale_given - wanted / scale_wanted).abs()
        worst = int(error.argmax())
        if float(error[worst]) > figure:
            figure, row = float(error[worst]), int(rows[worst])
    if row is None or figure <= tolerance:
        return _finding(
            check_id,
            step,
            Verdict.PASS,
            f"{int(bad.sum())} unscorable row(s): A = 0 and their groups' advantages point where statistics over "
            "the scorable rows alone put them",
            figure=figure,
            tolerance=tolerance,
        )
    return _finding(
        check_id,
        step,
        Verdict.FAIL,
        f"the scorable rows of a group with unscorable rows have advantages that differ in direction from those "
        f"re-derived without the unscorable rows by up to {figure:.3g} (unit-normalised per group, allowed "
        f"{tolerance:.3g}) at row {row}",
        figure=figure,
        tolerance=tolerance,
        row=row,
        catalog_id="8",
        likely_cause="an unscorable (None/NaN) reward enters its group's mean and std (collapsed to 0 by nansum)",
        fix="mark rows whose every reward is NaN unscorable: rewards NaN, nanmean/nanstd per group, A = 0",
    )


def rederive_step(step: TraceStep, spec: GRPOSpec, trace: Trace | None = None) -> list[Finding]:
    """Every re-derivation on one step (``trace``: the trace it belongs to, for the inputs other steps hold)."""
    findings: list[Finding] = []
    scope = step.meta.get("scope")
    for check in REDERIVATIONS.values():
        if scope is not None and (check.stage == "advantages") != (scope == "generation"):
            continue  # whole groups live on generation steps, losses on micro-batch steps
        try:
            finding = check.function(step, spec, trace)
        except (RuntimeError, ValueError, LookupError, TypeError) as error:
            findings.append(
                _finding(
                    check.id,
                    step,
                    Verdict.INCONCLUSIVE,
                    f"could not evaluate ({type(error).__name__}: {error})",
                    evaluation_error=type(error).__name__,
                )
            )
            continue
        if finding is not None:
            findings.append(finding)
    return findings


__all__ = ["FAMILY", "REDERIVATIONS", "Rederivation", "loss_mask", "loss_tokens_per_row", "rederive_step"]
