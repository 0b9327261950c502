"""Loss-stage invariants: finite loss, per-token loss and normaliser; positive normaliser."""

from __future__ import annotations

from grpo_check.config import GRPOSpec
from grpo_check.findings import Verdict
from grpo_check.invariants._common import Outcome, f64, finite_outcome, fmt, passed
from grpo_check.invariants.registry import register
from grpo_check.trace.model import TraceStep


@register(
    "loss.finite",
    requires=[("per_token_loss",), ("loss",), ("loss_normalizer",)],
    description="per_token_loss (on completion tokens), loss and loss_normalizer are finite",
    tolerance="exact",
    likely_cause="a non-finite advantage, log-prob or ratio reached the objective, or the normaliser is 0 "
    "(an all-masked micro-batch divided by its own token count)",
    fix="clamp normalisers with .clamp(min=1) and fix the first non-finite upstream tensor",
)
def loss_finite(step: TraceStep, spec: GRPOSpec | None, *, tolerance: float | None = None) -> Outcome:
    return finite_outcome(step, ("per_token_loss", "loss", "loss_normalizer"))


@register(
    "loss.normalizer_positive",
    requires=("loss_normalizer",),
    catalog_ids=("4",),
    description="the loss normaliser (denominator) is > 0",
    tolerance="exact",
    likely_cause="token count of an empty (all-masked) micro-batch, or a normaliser rescaled to 0 by integer "
    "division (e.g. num_items_in_batch // num_processes)",
    fix="clamp the normaliser with .clamp(min=1) and compute it in floating point",
)
def normalizer_positive(step: TraceStep, spec: GRPOSpec | None, *, tolerance: float | None = None) -> Outcome:
    value = float(f64(step["loss_normalizer"]).reshape(-1)[0])
    if value > 0:
        return passed(f"loss normaliser {fmt(value)} > 0", value, 0.0)
    return Outcome(Verdict.FAIL, f"loss normaliser is {fmt(value)}", figure=value, tolerance=0.0)
