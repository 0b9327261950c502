"""The float64 reference's loss and ∂loss/∂logps on a probe (internal to :mod:`grpo_check.probe`)."""

from __future__ import annotations

from typing import Any

import torch

from grpo_check.config import GRPOSpec
from grpo_check.findings import InputError
from grpo_check.probe.batches import ProbeBatch, probe_loss_mask
from grpo_check.reference import as_f64
from grpo_check.reference.gradients import autograd_logps_grad
from grpo_check.reference.loss import aggregate_loss, per_token_loss
from grpo_check.reference.step import reference_step

_NOT_INPUTS = ("prompt_ids", "prompt_mask", "completion_ids")


def reference_outcome(probe: ProbeBatch, spec: GRPOSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, ∂loss/∂logps) of the reference on ``probe``: :func:`grpo_check.reference.reference_step` (S1)."""
    inputs = {name: value for name, value in probe.tensors.items() if name not in _NOT_INPUTS}
    step = reference_step(inputs, spec, probe.meta, stages=("loss", "grad"))
    if "loss" not in step.tensors or "logps_grad" not in step.tensors:
        reason = step.skipped.get("loss") or step.skipped.get("grad") or "missing inputs"
        raise InputError(f"the reference cannot run probe {probe.name!r}: {reason}", field=probe.name)
    return step["loss"].detach(), step["logps_grad"].detach()


def reference_loss(
    leaf: torch.Tensor, probe: ProbeBatch, spec: GRPOSpec, *, normaliser_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """The reference's loss of ``probe`` as a function of ``leaf`` (its log-probs): (O6) then (N1)–(N6).

    ``normaliser_mask`` replaces the loss mask in the denominators only (a normaliser that counts other
    tokens than the loss does), the numerator keeps the loss mask.
    """
    t = probe.tensors
    mask = probe_loss_mask(probe, spec)
    token = per_token_loss(
        leaf,
        t.get("old_logps"),
        t["advantages"],
        mask,
        spec,
        ref_logps=t.get("ref_logps"),
        entropies=t.get("entropies"),
        sampler_logps=t.get("sampler_logps"),
        sampler_is_ratio=t.get("sampler_is_ratio"),
    )  # (O6)
    values, denominator_mask = token.per_token_loss, mask
    if normaliser_mask is not None:
        values, denominator_mask = token.per_token_loss * mask, as_f64(normaliser_mask)
    meta = probe.meta
    return aggregate_loss(
        values,
        denominator_mask,
        spec,
        meta.get("num_items_in_batch"),
        gradient_accumulation_steps=meta.get("gradient_accumulation_steps"),
        num_processes=meta.get("num_processes"),
        steps_per_generation=meta.get("steps_per_generation"),
        max_completion_length=meta.get("max_completion_length"),
        entropies=t.get("entropies"),
        entropy_mask=token.entropy_mask,
    ).loss  # (N1)–(N6)


def reference_outcome_with_normaliser_mask(
    probe: ProbeBatch, spec: GRPOSpec, normaliser_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, ∂loss/∂logps) when the denominators count ``normaliser_mask`` instead of the loss mask."""
    logps = as_f64(probe.tensors["logps"])
    loss = reference_loss(logps, probe, spec, normaliser_mask=normaliser_mask).detach()
    grad = autograd_logps_grad(
        logps, lambda leaf: reference_loss(leaf, probe, spec, normaliser_mask=normaliser_mask)
    )  # (G0)
    return loss, grad


def with_changes(
    probe: ProbeBatch, *, meta: dict[str, Any] | None = None, tensors: dict[str, Any] | None = None
) -> ProbeBatch:
    """A copy of ``probe`` with some meta entries / tensors replaced (a tensor set to None is dropped)."""
    return probe.replace(meta=meta, tensors=tensors)
