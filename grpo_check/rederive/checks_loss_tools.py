"""Re-derivation of the loss mask on tool tokens: tokens a tool wrote are left out of the loss."""

from __future__ import annotations

import torch

from grpo_check.config import GRPOSpec
from grpo_check.findings import Finding, Verdict
from grpo_check.rederive.checks_common import _finding, _not_applicable, _not_captured, _register
from grpo_check.rederive.inputs import (
    tensor_or_none,
)
from grpo_check.trace.model import Trace, TraceStep


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
