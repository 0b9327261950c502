"""Log-prob signatures: sign flip (S1), token shift (±1), temperature on the wrong side or quantity.

Each detector compares the trainer's log-probs with an *independent* source — the reference's own forward
pass (``model=``), else the sampler's log-probs (against the trainer's ``old_logps``, taken at the sampler's
weights) — under a transformation that mimics the bug:

* sign flip:   trainer ≈ −source                       (``logsumexp − logit``, bug-catalog S1)
* token shift: trainer[:, t] ≈ source[:, t ± 1]         (logits/labels misaligned by one position)
* temperature: trainer ≈ forward pass at T=1 (spec T≠1), at T² (applied twice), or log-probs divided by T
  (temperature applied to the log-probs instead of the logits)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch

from grpo_check._step_cache import finite_mask, host_view
from grpo_check.diagnose._context import Diagnosis, close, worst
from grpo_check.findings import Finding, Verdict


class _Source(NamedTuple):
    """An independent source of log-probs the trainer's are held against."""

    label: str
    trainer: torch.Tensor
    source: torch.Tensor
    rtol: float
    atol: float
    attach: list[Finding]
    """The failing findings a diagnosis from this source explains."""


def _sources(dx: Diagnosis) -> Iterator[_Source]:
    """The reference's own forward pass, and the sampler's log-probs, each beside the trainer's."""
    model_logps = dx.ref("logps")
    trainer = dx.trainer("logps")
    if model_logps is not None and trainer is not None:
        yield _Source(
            label="the reference's own forward pass",
            trainer=trainer,
            source=model_logps,
            rtol=1e-3,
            atol=1e-4,
            attach=dx.failing(prefix="logps.model"),
        )
    sampler = dx.trainer("sampler_logps")
    old = dx.trainer("old_logps")
    trainer_old = trainer if old is None else old
    if sampler is not None and trainer_old is not None:
        name = "logps" if old is None else "old_logps"
        yield _Source(
            label=f"the sampler's log-probs (vs the trainer's {name})",
            trainer=trainer_old,
            source=sampler,
            rtol=2e-2,
            atol=2e-2,
            attach=dx.failing(prefix="logps.sampler"),
        )


def detect_sign_flip(dx: Diagnosis) -> list[Finding]:
    """Trainer log-probs ≈ −(independent log-probs), or mostly positive: log-softmax sign flipped (S1)."""
    mask = dx.mask
    for label, trainer, source, rtol, atol, attach in _sources(dx):
        if close(trainer, source, mask, rtol=rtol, atol=atol):
            if label == "the reference's own forward pass":
                return []  # the trainer's log-probs match the reference's: no sign flip anywhere
            continue
        if not close(trainer, source, mask, rtol=rtol, atol=atol, negated=True):
            continue
        row, token, _ = worst(trainer, mask)
        return [_sign_finding(dx, f"trainer log-probs equal −1 × {label}", row, token, trainer, attach)]
    trainer = dx.trainer("logps")
    if trainer is None or mask is None:
        return []
    share = _positive_share(trainer, mask)
    if share >= 0.5:
        row, token, _ = worst(trainer.clamp(min=0.0), mask)
        return [
            _sign_finding(
                dx,
                f"{share:.0%} of the trainer's log-probs are positive (a log-prob is ≤ 0)",
                row,
                token,
                trainer,
                dx.failing(prefix="logps."),
            )
        ]
    return []


def _positive_share(trainer: torch.Tensor, mask: torch.Tensor) -> float:
    """The share of the finite log-probs on the mask that are above 1e-6 (0.0 where none is finite): counts, not
    boolean-indexed copies, as this runs on every step; in numpy on a small step (the same comparisons, less
    overhead), where a step with no masked log-prob above 1e-6 (most) needs no count at all."""
    host, host_mask = host_view(trainer), host_view(mask)
    if host is not None and host_mask is not None:
        above = (host > 1e-6) & host_mask  # NaN and −inf are not above; +inf is, and is not counted below
        if not np.logical_or.reduce(above, axis=None):  # none positive: the share is 0 whatever the count
            return 0.0
        selected = host_mask & np.isfinite(host)
        count = int(np.count_nonzero(selected))
        return int(np.count_nonzero(above & selected)) / count if count else 0.0
    selected = mask & finite_mask(trainer)  # the step's shared mask
    count = int(selected.count_nonzero())
    return int(((trainer > 1e-6) & selected).count_nonzero()) / count if count else 0.0


def _any(selected: torch.Tensor) -> bool:
    """``bool(selected.any())``, in numpy on a small step."""
    host = host_view(selected)
    return bool(host.any()) if host is not None else bool(selected.any())


def _count_different(a: torch.Tensor, b: torch.Tensor, selected: torch.Tensor) -> int:
    """Selected elements where ``a != b`` (NaN differs from everything), in numpy on a small step."""
    host_a, host_b, host_selected = host_view(a), host_view(b), host_view(selected)
    if host_a is not None and host_b is not None and host_selected is not None:
        return int(np.count_nonzero((host_a != host_b) & host_selected))
    return int(((a != b) & selected).count_nonzero())


def _sign_finding(
    dx: Diagnosis, what: str, row, token, trainer: torch.Tensor, attach: list[Finding]
) -> Finding:
    where = dx.where(row=row, token=token)
    value = float(trainer[row, token]) if row is not None and token is not None else None
    return dx.finding(
        check_id="diagnose.logps_sign",
        stage="logps",
        catalog_id="S1",
        figure=value,
        tolerance=0.0,
        where=where,
        explanation=f"{what}; the largest at {where.describe()} is {value:.4g}"
        if value is not None
        else what,
        likely_cause="log-softmax sign flipped (logsumexp − logit instead of logit − logsumexp)",
        fix="log_prob = logits.log_softmax(-1).gather(-1, ids) (= logit − logsumexp(logits)); it must be ≤ 0",
        attach_to=dx.failing(prefix="logps.") + dx.failing(stage="ratio") + dx.failing(stage="kl"),
    )


def detect_position_ids(dx: Diagnosis) -> list[Finding]:
    """Trainer log-probs match the forward pass with 0..L−1 positions, not the left-padding-aware ones (#14)."""
    failing = [f for f in dx.failing(prefix="logps.") if f.details.get("matches_positions") == "arange"]
    if not failing:
        return []
    target = failing[0]
    return [
        dx.finding(
            check_id="diagnose.position_ids",
            stage="logps",
            catalog_id="14",
            figure=target.figure,
            where=target.where,
            explanation=(
                f"the trainer's {target.details.get('quantity', 'logps')} equal the reference forward pass with "
                "position ids 0..P+T−1, which ignore the left padding; with the positions generation used "
                f"(cumsum of the attention mask) they differ by up to {target.figure:.3g}"
            ),
            likely_cause=(
                "left-padded training forward without position_ids: padded rows see shifted absolute positions, so "
                "their log-probs change with the amount of padding"
            ),
            fix="pass position_ids = attention_mask.cumsum(-1) − 1 (clamped at 0) to the training forward",
            attach_to=dx.failing(prefix="logps.") + dx.failing(stage="ratio"),
        )
    ]


def _logit_shift_finding(dx: Diagnosis, shift: int, trainer: torch.Tensor, source: torch.Tensor) -> Finding:
    mask = dx.mask
    row, token, value = worst(trainer - source, mask)
    where = dx.where(row=row, token=token)
    which = "after" if shift == 1 else "before"
    return dx.finding(
        check_id="diagnose.logps_shift",
        stage="logps",
        catalog_id="X-shift",
        figure=value,
        where=where,
        explanation=(
            f"trainer log-probs equal the reference forward pass when token t is scored by the logits one position "
            f"{which} the ones that predict it (logits[:, P−1+t{shift:+d}]); largest difference from the aligned "
            f"log-probs {value:.4g} at {where.describe()}"
        ),
        likely_cause=(
            "off-by-one shift: logits and labels misaligned by one token ("
            + ("logits[:, P:] instead of logits[:, P−1:−1]" if shift == 1 else "logits[:, P−2:−2]")
            + ")"
        ),
        fix="score completion_ids[:, t] with logits[:, P−1+t] (logits[:, P−1:−1])",
        details={"shift": shift, "shifted": "logits"},
        attach_to=dx.failing(prefix="logps.") + dx.failing(stage="ratio"),
    )


def detect_token_shift(dx: Diagnosis) -> list[Finding]:
    """Trainer log-probs match the independent source shifted by one token (labels or logits misaligned)."""
    mask = dx.mask
    trainer, aligned = dx.trainer("logps"), dx.ref("logps")
    misaligned = (
        dx.shifted_logps is not None
        and trainer is not None
        and aligned is not None
        and not close(trainer, aligned, mask, rtol=1e-3, atol=1e-4)
    )
    for shift in (1, -1) if misaligned else ():
        candidate = dx.shifted_logps(shift)
        if candidate is not None and close(trainer, candidate, mask, rtol=1e-3, atol=1e-4):
            return [_logit_shift_finding(dx, shift, trainer, aligned)]
    for label, trainer, source, rtol, atol, _attach in _sources(dx):
        if close(trainer, source, mask, rtol=rtol, atol=atol):
            continue
        for shift in (1, -1):
            if shift == 1:  # trainer[:, t] == source[:, t + 1]
                got, want = trainer[:, :-1], source[:, 1:]
                overlap = None if mask is None else mask[:, :-1] & mask[:, 1:]
            else:  # trainer[:, t] == source[:, t − 1]
                got, want = trainer[:, 1:], source[:, :-1]
                overlap = None if mask is None else mask[:, 1:] & mask[:, :-1]
            if overlap is not None and int(overlap.sum()) < 2:
                continue
            if not close(got, want, overlap, rtol=rtol, atol=atol):
                continue
            row, token, value = worst(trainer - source, mask)
            where = dx.where(row=row, token=token)
            direction = "the next" if shift == 1 else "the previous"
            return [
                dx.finding(
                    check_id="diagnose.logps_shift",
                    stage="logps",
                    catalog_id="X-shift",
                    figure=value,
                    where=where,
                    explanation=(
                        f"trainer log-probs at token t equal {label} at token t{shift:+d}: each position is scored "
                        f"with {direction} token's label; largest unshifted difference {value:.4g} at {where.describe()}"
                    ),
                    likely_cause=(
                        "logits and labels misaligned by one token (the one-token shift between logits[:, P−1+t] and "
                        "completion_ids[:, t] applied twice or not at all)"
                    ),
                    fix="use logits[:, P−1:−1] to score completion_ids (position P−1+t predicts token t)",
                    details={"shift": shift},
                    attach_to=dx.failing(prefix="logps.") + dx.failing(stage="ratio"),
                )
            ]
    return []


_FORWARD_VARIANTS = {
    "no_attention_mask": (
        "the trainer's {quantity} equal the reference forward pass run without the attention mask (padding "
        "attended to, positions 0..P+T−1); with the mask they differ by up to {figure:.3g}",
        "the log-prob forward is called without attention_mask: left padding is attended to and shifts the "
        "positions, so a row's log-probs depend on how much it was padded",
        "pass attention_mask (and position_ids from it) to the model in the log-prob helper",
    ),
    "temperature_1": (
        "the trainer's {quantity} equal the reference model's forward pass at T=1 while the policy is scored at "
        "T={temperature:g} (differing by up to {figure:.3g}): the reference model's logits are not divided by the "
        "temperature",
        "temperature applied to the policy's logits only: the KL compares a tempered policy with an untempered "
        "reference model",
        "score the reference model with the same temperature as the policy (one log-prob helper for both)",
    ),
}


def detect_forward_variant(dx: Diagnosis) -> list[Finding]:
    """Trainer log-probs equal a known wrong forward pass (no attention mask; reference model at T=1)."""
    out: list[Finding] = []
    for label, (explanation, cause, fix) in _FORWARD_VARIANTS.items():
        failing = [f for f in dx.failing(prefix="logps.") if f.details.get("matches_forward") == label]
        if not failing:
            continue
        target = failing[0]
        quantity = target.details.get("quantity", "logps")
        out.append(
            dx.finding(
                check_id="diagnose.forward_variant",
                stage="logps",
                catalog_id="1" if label == "temperature_1" else None,
                figure=target.figure,
                where=target.where,
                explanation=explanation.format(
                    quantity=quantity, figure=target.figure or 0.0, temperature=dx.spec.temperature
                ),
                likely_cause=cause,
                fix=fix,
                details={"variant": label, "quantity": quantity},
                attach_to=failing + dx.failing(stage="ratio") + dx.failing(stage="kl"),
            )
        )
    return out


def detect_temperature(dx: Diagnosis) -> list[Finding]:
    """Trainer log-probs match the reference forward pass at another temperature (or divided by T)."""
    trainer, at_spec = dx.trainer("logps"), dx.ref("logps")
    if trainer is None or at_spec is None or dx.model_logps is None:
        return []
    mask = dx.mask
    if close(trainer, at_spec, mask, rtol=1e-3, atol=1e-4):
        return []
    temperature = dx.spec.temperature
    if temperature == 1.0:
        return []
    at_one = dx.model_logps(1.0)
    candidates = []
    if at_one is not None:
        candidates.append(
            (
                "the logits were not divided by the temperature (trainer log-probs equal the forward pass at T=1 "
                f"while the sampler used T={temperature:g})",
                at_one,
                "temperature applied on the sampler side only: the trainer scores at T=1",
                "divide the logits by the sampling temperature before log_softmax in the training forward",
            )
        )
        candidates.append(
            (
                f"the temperature was applied to the log-probs instead of the logits (trainer = logp_T=1 / {temperature:g})",
                at_one / temperature,
                "temperature applied to the wrong quantity (log-probs instead of logits)",
                "scale the logits, not the log-probs: log_softmax(logits / T)",
            )
        )
    twice = dx.model_logps(temperature * temperature)
    if twice is not None:
        candidates.append(
            (
                f"the logits were divided by the temperature twice (trainer log-probs equal the forward pass at "
                f"T={temperature * temperature:g})",
                twice,
                "temperature applied twice (e.g. by a logits processor and again in the loss)",
                "divide the logits by the temperature exactly once",
            )
        )
    for explanation, candidate, cause, fix in candidates:
        if close(trainer, candidate, mask, rtol=1e-3, atol=1e-4):
            row, token, value = worst(trainer - at_spec, mask)
            return [
                dx.finding(
                    check_id="diagnose.temperature",
                    stage="logps",
                    catalog_id="1",
                    figure=value,
                    where=dx.where(row=row, token=token),
                    explanation=explanation,
                    likely_cause=cause,
                    fix=fix,
                    details={"spec_temperature": temperature},
                    attach_to=dx.failing(prefix="logps.") + dx.failing(stage="ratio"),
                )
            ]
    return []


def detect_old_is_ref(dx: Diagnosis) -> list[Finding]:
    """The old log-probs the loss received are the reference model's (ρ = π/π_ref, not π/π_old)."""
    failing = [f for f in dx.failing(prefix="logps.old_model") if f.likely_cause is None]
    old, ref, mask = dx.trainer("old_logps"), dx.trainer("ref_logps"), dx.mask
    if not failing or old is None or ref is None or old.shape != ref.shape:
        return []
    if not close(old, ref, mask, rtol=1e-6, atol=1e-7):
        return []
    return [
        dx.finding(
            check_id="diagnose.old_is_ref",
            stage="logps",
            catalog_id=None,
            figure=failing[0].figure,
            where=failing[0].where,
            explanation=(
                "the old log-probs the loss received are the reference model's log-probs, element for element, while "
                "the policy's own forward pass at the weights that sampled the batch differs from them "
                f"(|Δ| up to {failing[0].figure or 0.0:.3g}): the ratio is π/π_ref, not π/π_old"
            ),
            likely_cause="old_per_token_logps set from the reference model's log-probs (ref_per_token_logps)",
            fix="take the old log-probs from the policy that generated the batch (or leave them unset on-policy)",
            attach_to=dx.failing(prefix="logps.") + dx.failing(stage="ratio"),
        )
    ]


def detect_old_logps_mismatch(dx: Diagnosis) -> list[Finding]:
    """Old log-probs taken at the current weights differ from the same forward pass (#16/#15/#17)."""
    failing = dx.failing(prefix="logps.old_model")
    current = dx.compared("logps.model")
    if (
        not failing
        or failing[0].likely_cause is not None
        or current is None
        or current.verdict.name != "PASS"
    ):
        return []
    old = dx.trainer("old_logps")
    quantised = old is not None and bool(torch.equal(old.to(torch.bfloat16).double(), old))
    precision = " — its values are exactly bf16-representable: it ran in bf16" if quantised else ""
    return [
        dx.finding(
            check_id="diagnose.old_logps_mismatch",
            stage="logps",
            catalog_id="16",
            figure=failing[0].figure,
            where=failing[0].where,
            explanation=(
                "no optimizer step happened since the old log-probs were taken and the training forward matches the "
                f"reference, but old_logps do not{precision}: ρ ≠ 1 on-policy"
            ),
            likely_cause=(
                "old log-probs computed differently from the training forward (precision/autocast, batch shape or "
                "micro-batching, dropout): ρ ≠ 1 from non-invariance"
            ),
            fix="compute old and current log-probs with the same dtype, micro-batching and eval/train mode",
            details={"bf16_quantised": quantised},
            attach_to=dx.failing(prefix="logps.") + dx.failing(stage="ratio"),
        )
    ]


def detect_ref_is_policy(dx: Diagnosis) -> list[Finding]:
    """The reference log-probs are the policy's own (#20): ref model = policy, or the adapter not disabled."""
    ref_logps, logps, mask = dx.trainer("ref_logps"), dx.trainer("logps"), dx.mask
    if ref_logps is None or logps is None:
        return []
    failing = dx.failing(prefix="logps.ref_model")
    step_index = dx.step.meta.get("step")
    if failing:
        # where the reference model and the policy really are the same function (e.g. before the first
        # optimizer step), equal log-probs are no evidence of #20: the disagreement with the reference model's
        # own forward comes from how the trainer computes log-probs, which other detectors name
        own_ref, own_policy = dx.ref("ref_logps"), dx.ref("logps")
        if (
            own_ref is not None
            and own_policy is not None
            and close(own_ref, own_policy, mask, rtol=1e-6, atol=1e-6)
        ):
            return []
        policy_sources = [logps, dx.ref("logps"), dx.trainer("old_logps")]
        if not any(
            close(ref_logps, src, mask, rtol=1e-3, atol=1e-4) for src in policy_sources if src is not None
        ):
            return []
        how = "the reference model's own forward pass disagrees"
    else:
        # no reference model to hold them to: identical to the current policy after optimizer steps is the tell
        sel = mask if mask is not None else torch.ones_like(logps, dtype=torch.bool)
        moved = dx.step.meta.get("optimizer_steps_since_old_logps", 0) or 0
        if not (isinstance(step_index, int) and step_index >= 1 and dx.spec.beta != 0.0):
            return []
        if moved or ref_logps.shape != logps.shape:
            return []
        if dx.step.meta.get("policy_changed_since_start") is False:  # zero updates so far: policy = reference
            return []
        if _count_different(ref_logps, logps, sel):  # not bit-identical (NaN counts as different)
            return []
        if not _any(sel):  # no token to compare (every row masked, e.g. truncated): no evidence
            return []
        how = "they are bit-identical to the policy's after optimizer steps, so KL ≡ 0 and β does nothing"
        failing = dx.failing(stage="kl") + dx.failing(prefix="logps.")
    row, token, value = worst(ref_logps - logps, mask)
    return [
        dx.finding(
            check_id="diagnose.ref_is_policy",
            stage="logps",
            catalog_id="20",
            verdict=Verdict.FAIL if dx.failing(prefix="logps.ref_model") else Verdict.WARN,
            figure=value,
            where=dx.where(row=row, token=token),
            explanation=f"the trainer's ref_logps equal the current policy's log-probs; {how}",
            likely_cause=(
                "wrong reference model: ref = policy (shared module), or the LoRA adapter not disabled for the "
                "reference forward"
            ),
            fix="build the reference as a frozen copy of the initial policy (or disable the adapter) in eval mode",
            attach_to=failing,
        )
    ]
