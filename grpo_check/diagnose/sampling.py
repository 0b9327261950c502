"""Sampler-vs-trainer signatures: truncated sampling support (#3), sampler at the wrong temperature, and
generic sampler/trainer disagreement on identical weights (#1).

With d = trainer log-prob − sampler log-prob on the same token (the trainer's ``old_logps``, taken at the
sampler's weights): a sampler that renormalises over its top-p/top-k/min-p support reports
``sampler = trainer − log S_t``, i.e. ``d = log S_t`` with S_t the kept probability mass, which the reference
computes from the model's logits with the same truncation.
"""

from __future__ import annotations

import torch

from grpo_check.diagnose._context import Diagnosis, close, worst
from grpo_check.findings import Finding, Verdict


def _d(dx: Diagnosis) -> tuple[torch.Tensor, str] | None:
    sampler = dx.trainer("sampler_logps")
    trainer = dx.trainer("old_logps")
    name = "old_logps"
    if trainer is None:
        trainer, name = dx.trainer("logps"), "logps"
    if sampler is None or trainer is None:
        return None
    return trainer - sampler, name


def detect_truncated_support(dx: Diagnosis) -> list[Finding]:
    """d ≈ log S_t: the sampler renormalised over its truncated support (bug-catalog #3)."""
    got = _d(dx)
    failing = dx.failing(prefix="logps.sampler")
    if got is None or not failing:
        return []
    d, name = got
    mask = dx.mask
    spec = dx.spec
    kept = dx.kept_mass() if dx.kept_mass is not None else None
    if kept is not None:
        log_kept = torch.log(kept.double().clamp_min(1e-300))
        if not close(d, log_kept, mask, rtol=5e-2, atol=5e-3):
            return []
        row, token, value = worst(d, mask)
        sel = mask if mask is not None else torch.ones_like(d, dtype=torch.bool)
        sel = sel & torch.isfinite(log_kept)  # NaN on rows a row-subset forward did not run
        return [
            dx.finding(
                check_id="diagnose.truncated_support",
                stage="logps",
                catalog_id="3",
                figure=value,
                where=dx.where(row=row, token=token),
                explanation=(
                    f"d = {name} − sampler_logps equals log S_t, the log of the probability mass the sampler kept "
                    f"(top_p={spec.top_p:g}, top_k={spec.top_k}, min_p={spec.min_p}); mean log S_t "
                    f"{float(log_kept[sel].mean()):.3g}, largest |d| {value:.3g} at "
                    f"{dx.where(row=row, token=token).describe()}"
                ),
                likely_cause=(
                    "sampler log-probs renormalised over the truncated (top-p/top-k/min-p) support while the trainer "
                    "uses the full vocabulary"
                ),
                fix=(
                    "take the sampler's log-probs of the unprocessed distribution (e.g. vLLM logprobs_mode="
                    "'raw_logprobs'/'processed_logprobs' consistently with the trainer), or apply the same truncation "
                    "in the trainer"
                ),
                attach_to=failing,
            )
        ]
    if not spec.truncated_sampling or mask is None:
        return []
    values = d[mask & torch.isfinite(d)]
    if values.numel() == 0 or float((values <= 1e-6).double().mean()) < 0.99 or float(values.mean()) > -1e-3:
        return []
    row, token, value = worst(d, mask)
    return [
        dx.finding(
            check_id="diagnose.truncated_support",
            stage="logps",
            catalog_id="3",
            verdict=Verdict.WARN,
            figure=value,
            where=dx.where(row=row, token=token),
            explanation=(
                f"the sampler's log-probs are ≥ the trainer's on {float((values <= 1e-6).double().mean()):.0%} of "
                f"tokens (mean d {float(values.mean()):.3g}) with a truncating sampler (top_p={spec.top_p:g}, "
                f"top_k={spec.top_k}); pass the model to confirm d = log S_t"
            ),
            likely_cause="sampler log-probs renormalised over the truncated sampling support",
            fix="use log-probs of the full distribution on both sides, or the same truncation on both sides",
            attach_to=failing,
        )
    ]


def detect_sampler_temperature(dx: Diagnosis) -> list[Finding]:
    """Sampler log-probs equal the reference forward pass at T=1 while the spec samples at T≠1."""
    sampler = dx.trainer("sampler_logps")
    failing = dx.failing(prefix="logps.sampler")
    if sampler is None or not failing or dx.model_logps is None or dx.spec.temperature == 1.0:
        return []
    at_one = dx.model_logps(1.0)
    if at_one is None or not close(sampler, at_one, dx.mask, rtol=1e-3, atol=1e-4):
        return []
    row, token, value = (
        worst(sampler - dx.ref("logps"), dx.mask) if dx.ref("logps") is not None else (None, None, 0.0)
    )
    return [
        dx.finding(
            check_id="diagnose.sampler_temperature",
            stage="logps",
            catalog_id="1",
            figure=value,
            where=dx.where(row=row, token=token),
            explanation=(
                f"the sampler's log-probs equal the reference forward pass at T=1 although sampling used "
                f"T={dx.spec.temperature:g}: the temperature is applied on the trainer side only"
            ),
            likely_cause="temperature applied on one side only (sampler reports T=1 log-probs)",
            fix="report sampler log-probs of softmax(logits / T), the distribution actually sampled",
            attach_to=failing,
        )
    ]


def detect_sampler_mismatch(dx: Diagnosis) -> list[Finding]:
    """Fallback for a failing sampler comparison: off-policy without knowing it (bug-catalog #1)."""
    failing = [f for f in dx.failing(prefix="logps.sampler") if f.likely_cause is None]
    if not failing:
        return []
    metrics = failing[0].details.get("metrics", {})
    return [
        dx.finding(
            check_id="diagnose.sampler_mismatch",
            stage="logps",
            catalog_id="1",
            verdict=failing[0].verdict,
            figure=failing[0].figure,
            where=failing[0].where,
            explanation=(
                f"trainer and sampler disagree on the same tokens at the same weights (k3 {metrics.get('k3', 0):.3g}, "
                f"Pearson {'undefined' if metrics.get('pearson') is None else format(metrics['pearson'], '.4f')}); "
                "no more specific signature (truncation, temperature, shift, sign) matches"
            ),
            likely_cause=(
                "trainer and sampler log-probs differ on identical weights: silently off-policy (precision, kernels, "
                "stale weights)"
            ),
            fix="apply truncated importance sampling (TIS) or fix the mismatch; check weight sync and dtypes",
            attach_to=failing,
        )
    ]
