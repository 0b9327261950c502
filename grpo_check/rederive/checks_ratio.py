"""Re-derivation of the ratio stage: once an optimizer step came between generating a batch and training on it,
the loss received the generating policy's log-probs (the ratio is not identically 1)."""

from __future__ import annotations

import numpy as np
import torch

from grpo_check._step_cache import host_view
from grpo_check.config import GRPOSpec
from grpo_check.findings import Finding, Verdict
from grpo_check.rederive.checks_common import _finding, _not_applicable, _not_captured, _register
from grpo_check.rederive.derive import (
    optimizer_steps_between,
)
from grpo_check.rederive.inputs import (
    generation_step_of,
    tensor_or_none,
    whole,
)
from grpo_check.trace.model import Trace, TraceStep


# ------------------------------------------------------------------------------------------ ratio: old logps
def _moved_host(
    logps: torch.Tensor, old: torch.Tensor, mask: torch.Tensor | None
) -> tuple[float, int, int] | None:
    """(max |logps − old| over the loss tokens, tokens where they differ, loss tokens) of a small CPU step
    whose log-probs differ somewhere on a loss token, in numpy: the same element-wise operations and maximum as
    :func:`old_logps_check`'s torch path, which takes every other case (and ``None`` is returned)."""
    if mask is None or mask.shape != logps.shape:
        return None
    host_logps, host_old, host_mask = (
        host_view(logps),
        host_view(old),
        host_view(mask),
    )
    if host_logps is None or host_old is None or host_mask is None:
        return None
    valid = host_mask.astype(bool)
    differ = (host_logps != host_old) & valid
    differing = int(np.count_nonzero(differ))
    if not differing:
        return None
    return float(np.abs(host_logps - host_old)[valid].max()), differing, int(np.count_nonzero(valid))


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
        moved_by = _moved_host(logps, old, mask)
        if moved_by is not None:
            moved, differing, valid_tokens = moved_by
            return _finding(
                check_id,
                step,
                Verdict.PASS,
                f"{head}; old_logps differ from logps on {differing} of {valid_tokens} token(s) "
                f"(max |Δ| = {moved:.3g})",
                figure=moved,
                optimizer_steps_between=between,
            )
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
