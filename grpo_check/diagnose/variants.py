"""Detectors for a failing ratio or aggregation: the trainer's tensor equals the reference computed another,
known-wrong way (an inverted ratio, the other importance-sampling level, padding counted, another
aggregation). Causes and fixes come from :mod:`grpo_check.signatures`."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from grpo_check.config import AGGREGATIONS
from grpo_check.diagnose._context import Diagnosis, close, worst
from grpo_check.findings import Finding
from grpo_check.signatures import Signature, signature


def _first_match(
    dx: Diagnosis,
    got: torch.Tensor,
    candidates: Iterator[tuple[Signature, Callable[[], torch.Tensor]]],
    mask: torch.Tensor | None,
) -> tuple[Signature, torch.Tensor] | None:
    for sig, compute in candidates:
        try:
            candidate = compute()
        except (RuntimeError, ValueError):
            continue
        if close(got, candidate, mask, rtol=1e-3, atol=1e-6):
            return sig, candidate
    return None


def _ratio_candidates(dx: Diagnosis) -> Iterator[tuple[Signature, Callable[[], torch.Tensor]]]:
    from grpo_check.reference.ratio import importance_ratio

    logps, old, mask = dx.trainer("logps"), dx.trainer("old_logps"), dx.step.get("completion_mask")
    reference = dx.ref("ratio")
    if logps is None or old is None or reference is None:
        return
    mask = torch.ones_like(logps) if mask is None else mask.double()
    level = dx.spec.importance_sampling_level
    other = "sequence" if level == "token" else "token"
    log_ratio = logps - old
    yield signature("ratio_inverted"), lambda: 1.0 / reference
    level_sig = Signature(
        "ratio_other_level",
        None,
        cause=f"{other}-level importance ratio where the configuration says {level}",
        fix=f"set importance_sampling_level={other!r} in the configuration if that is what the trainer does",
    )
    yield level_sig, lambda: importance_ratio(logps, old, mask, other)
    yield signature("ratio_sequence_sum"), lambda: (log_ratio * mask).sum(-1, keepdim=True).exp()
    yield signature("ratio_padding_averaged"), lambda: log_ratio.mean(-1, keepdim=True).exp()


def detect_ratio_variant(dx: Diagnosis) -> list[Finding]:
    """The trainer's ratio is the reference's computed another known-wrong way."""
    failing = [f for f in dx.failing(prefix="ratio.values") if f.likely_cause is None]
    got = dx.trainer("ratio")
    if not failing or got is None:
        return []
    mask = dx.mask if got.dim() == 2 and got.shape[1] > 1 else None
    match = _first_match(dx, got, _ratio_candidates(dx), mask)
    if match is None:
        return []
    sig, _candidate = match
    row, token, value = worst(got - dx.ref("ratio"), mask)
    return [
        dx.finding(
            check_id="diagnose.ratio_variant",
            stage="ratio",
            catalog_id=sig.catalog_id,
            figure=value,
            where=dx.where(row=row, token=token),
            explanation=f"the trainer's importance ratio matches the reference computed this way: {sig.cause}",
            likely_cause=sig.cause,
            fix=sig.fix,
            attach_to=failing,
        )
    ]


def _aggregation_candidates(dx: Diagnosis) -> Iterator[tuple[Signature, Callable[[], torch.Tensor]]]:
    from grpo_check.reference.loss import aggregate_loss

    values, mask = dx.trainer("per_token_loss"), dx.step.get("completion_mask")
    if values is None:
        return
    mask = torch.ones_like(values, dtype=torch.long) if mask is None else mask
    spec = dx.spec
    items = dx.step.meta.get("num_items_in_batch")
    items = None if items is None else float(items)

    def aggregate(variant=spec, variant_mask=mask):
        return aggregate_loss(values, variant_mask, variant, items).loss

    used = spec.aggregation_effective
    for mode in AGGREGATIONS:
        if mode != used:
            sig = Signature(
                "aggregation_mode",
                "5",
                cause=f"aggregation {mode!r} where loss_type={spec.loss_type!r} uses {used!r}",
                fix=f"aggregate with {used} (loss_type={spec.loss_type}), or declare aggregation={mode!r}",
            )
            yield sig, lambda m=mode: aggregate(spec.replace(aggregation=m))
    yield signature("aggregation_mask_not_applied"), lambda: aggregate(spec, torch.ones_like(mask))
    yield (
        signature("dr_grpo_batch_length"),
        lambda: aggregate(spec.replace(max_completion_length=values.shape[1])),
    )


def detect_aggregation_variant(dx: Diagnosis) -> list[Finding]:
    """The loss is the trainer's own per-token loss aggregated another known way (``loss.aggregation``)."""
    failing = [f for f in dx.failing(prefix="loss.aggregation") if f.likely_cause is None]
    got = dx.trainer("loss")
    if not failing or got is None:
        return []
    match = _first_match(dx, got, _aggregation_candidates(dx), None)
    if match is None:
        return []
    sig, _candidate = match
    return [
        dx.finding(
            check_id="diagnose.aggregation_variant",
            stage="loss",
            catalog_id=sig.catalog_id,
            figure=abs(float(got.reshape(-1)[0]) - float(dx.ref("loss").reshape(-1)[0])),
            explanation=f"the trainer's loss is its per-token loss aggregated another way: {sig.cause}",
            likely_cause=sig.cause,
            fix=sig.fix,
            attach_to=failing,
        )
    ]


__all__ = ["detect_aggregation_variant", "detect_ratio_variant"]
