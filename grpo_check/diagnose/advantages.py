"""Advantage-stage signatures: wrong grouping (#6), per-group scale factors (ε size S2 / std convention #10).

* **grouping** — the trainer's advantages equal the reference advantages computed with a *different*
  partition of the rows (contiguous blocks of G ↔ strided ``arange(B) % (B/G)``: ``repeat`` vs
  ``repeat_interleave``); with respect to the true ``group_index`` their group sums are ≠ 0.
* **per-group scale** — A_impl/A_ref is a constant per group. Solving for the implied (std convention, ε)
  separates a convention (population std, ε = 1e-6 / 1e-8) from a bug (ε ≫ "for stability only").
"""

from __future__ import annotations

import torch

from grpo_check.diagnose._context import Diagnosis, close, worst
from grpo_check.diagnose.conventions import classify_advantage_scale
from grpo_check.findings import Finding, Verdict
from grpo_check.signatures import signature


def _row_advantages(adv: torch.Tensor) -> torch.Tensor:
    return adv[:, 0] if adv.dim() == 2 else adv.reshape(-1)


def _unexplained_advantages(dx: Diagnosis) -> tuple[list[Finding], torch.Tensor, torch.Tensor] | None:
    """(the advantage failures no diagnosis explains yet, the trainer's per-row advantages, the reference's), or
    None when there is no such failure or either side's advantages are missing."""
    failing = [f for f in dx.failing(prefix="advantages.") if f.likely_cause is None]
    trainer_adv, ref_adv = dx.trainer("advantages"), dx.ref("advantages")
    if not failing or trainer_adv is None or ref_adv is None:
        return None
    return failing, _row_advantages(trainer_adv), ref_adv


def _canonical(partition: torch.Tensor) -> tuple[tuple[int, ...], ...]:
    groups: dict[int, list[int]] = {}
    for row, g in enumerate(partition.tolist()):
        groups.setdefault(int(g), []).append(row)
    return tuple(sorted(tuple(v) for v in groups.values()))


def _alternative_groupings(group_index: torch.Tensor, group_size: int) -> list[tuple[str, torch.Tensor]]:
    rows = group_index.numel()
    if group_size < 2 or rows % group_size or rows // group_size < 2:
        return []
    n_groups = rows // group_size
    candidates = [
        (
            "contiguous blocks of G rows (repeat_interleave order) while the prompts were laid out with repeat",
            torch.arange(rows) // group_size,
        ),
        (
            "strided rows i, i+B/G, … (repeat order) while the prompts were laid out with repeat_interleave",
            torch.arange(rows) % n_groups,
        ),
    ]
    true = _canonical(group_index)
    return [(name, part) for name, part in candidates if _canonical(part) != true]


def _group_sums(adv: torch.Tensor, group_index: torch.Tensor) -> dict[int, float]:
    out: dict[int, float] = {}
    for g in torch.unique(group_index).tolist():
        vals = adv[(group_index == g) & torch.isfinite(adv)]
        out[int(g)] = float(vals.sum())
    return out


def detect_grouping(dx: Diagnosis) -> list[Finding]:
    """Advantages match the reference under another row partition (repeat vs repeat_interleave)."""
    failing = dx.failing(prefix="advantages.")
    if not failing:  # most steps: nothing to explain, so nothing to compute
        return []
    trainer_adv, gi = dx.trainer("advantages"), dx.group_index
    if trainer_adv is None or gi is None:
        return []
    from grpo_check.stepref.inputs import reference_advantages

    adv = _row_advantages(trainer_adv)
    sums = _group_sums(adv, gi)
    worst_group = max(sums, key=lambda g: abs(sums[g]))
    for description, partition in _alternative_groupings(gi, dx.spec.num_generations):
        alt = reference_advantages(dx.step, dx.spec, group_index=partition)
        if alt is None or not close(adv, alt.advantages, rtol=2e-3, atol=1e-4):
            continue
        return [
            dx.finding(
                check_id="diagnose.grouping",
                stage="advantages",
                catalog_id=signature("repeat_not_interleave").catalog_id,
                figure=abs(sums[worst_group]),
                tolerance=1e-6,
                where=dx.where(prompt=worst_group),
                explanation=(
                    f"advantages are group-normalised over the wrong rows: with respect to the true prompt groups "
                    f"group {worst_group} sums to {sums[worst_group]:.4g} instead of 0, but they match the reference "
                    f"exactly when the rows are grouped as {description}"
                ),
                likely_cause=signature("repeat_not_interleave").cause,
                fix=signature("repeat_not_interleave").fix,
                details={"group_sums": {str(k): v for k, v in sums.items()}, "partition": partition.tolist()},
                attach_to=failing,
            )
        ]
    return []


def detect_group_scale(dx: Diagnosis) -> list[Finding]:
    """A_impl/A_ref constant per group: a std/ε convention (#10) or an ε far too large (S2)."""
    failing = dx.failing(prefix="advantages.")
    if not failing:
        return []
    trainer_adv, ref_adv, gi = dx.trainer("advantages"), dx.ref("advantages"), dx.group_index
    rewards = dx.ref("rewards")
    if trainer_adv is None or ref_adv is None or gi is None or rewards is None:
        return []
    if dx.spec.scale_rewards != "group" or dx.spec.multi_objective_aggregation != "sum_then_normalize":
        return []
    adv = _row_advantages(trainer_adv)
    match = classify_advantage_scale(adv, ref_adv, rewards, gi, dx.spec.std, dx.spec.adv_epsilon, rtol=2e-3)
    if match is None:
        return []
    row_mask = gi == match.worst_group
    row, _, _ = worst(torch.where(row_mask, adv - ref_adv, torch.zeros_like(adv)))
    details = match.to_dict()
    if match.is_convention:
        return [
            dx.finding(
                check_id="diagnose.advantage_convention",
                stage="advantages",
                catalog_id="10",
                verdict=Verdict.CONVENTION,
                figure=match.per_group_ratio[match.worst_group],
                where=dx.where(row=row),
                explanation=match.explanation,
                likely_cause=(
                    f"a different but legitimate convention: {match.std} std, ε ≈ {match.epsilon:.2g} "
                    "(TRL: sample std + 1e-4; verl: 1e-6; OpenRLHF: 1e-8)"
                ),
                fix=(
                    f"nothing to fix; to compare exactly, run the reference with std={match.std!r}, "
                    f"adv_epsilon={max(match.epsilon, 0.0):.2g}"
                ),
                details=details,
                attach_to=failing,
            )
        ]
    ratio = match.per_group_ratio[match.worst_group]
    return [
        dx.finding(
            check_id="diagnose.advantage_epsilon",
            stage="advantages",
            catalog_id="S2",
            figure=match.epsilon,
            tolerance=0.01 * match.typical_std,
            where=dx.where(row=row),
            explanation=(
                f"{match.explanation}; group {match.worst_group}'s advantages are ×{ratio:.3g} the reference's"
            ),
            likely_cause=(
                f"advantage epsilon far too large: implied ε ≈ {match.epsilon:.3g} against a typical group std of "
                f"{match.typical_std:.3g} (A_impl/A_ref = σ/(σ+ε) per group)"
            ),
            fix="use a small ε only for numerical stability (1e-4 … 1e-8): A = (r − mean) / (std + 1e-4)",
            details=details,
            attach_to=failing,
        )
    ]


def detect_permuted(dx: Diagnosis) -> list[Finding]:
    """The trainer's advantages are the reference's, in another row order (misaligned with their rows)."""
    unexplained = _unexplained_advantages(dx)
    if unexplained is None:
        return []
    failing, adv, ref_adv = unexplained
    if adv.shape != ref_adv.shape or not bool(torch.isfinite(adv).all()):
        return []
    if not close(torch.sort(adv).values, torch.sort(ref_adv).values, rtol=2e-3, atol=1e-4):
        return []
    row, _, value = worst(adv - ref_adv)
    moved = int(((adv - ref_adv).abs() > 1e-4 + 2e-3 * float(ref_adv.abs().max())).sum())
    return [
        dx.finding(
            check_id="diagnose.advantages_permuted",
            stage="advantages",
            catalog_id="6",
            figure=value,
            where=dx.where(row=row),
            explanation=(
                f"the trainer's advantages are exactly the reference's values in another row order ({moved} of "
                f"{adv.numel()} rows moved; worst at {dx.where(row=row).describe()}): each completion is trained "
                "with another completion's advantage"
            ),
            likely_cause=(
                "advantages misaligned with their rows: reshaped/transposed or gathered in a different order than the "
                "rewards (e.g. view(-1, G).T.reshape(-1), per-device order)"
            ),
            fix="flatten the (num_prompts, G) advantages in the same order as the rows: A.view(-1) after view(-1, G)",
            details={"rows_moved": moved},
            attach_to=failing,
        )
    ]


def detect_group_sums(dx: Diagnosis) -> list[Finding]:
    """Fallback: trainer advantages do not centre within the true groups although the reference's do."""
    failing = [f for f in dx.failing(prefix="advantages.") if f.likely_cause is None]
    if not failing:
        return []
    trainer_adv, gi = dx.trainer("advantages"), dx.group_index
    if trainer_adv is None or gi is None or dx.spec.baseline != "mean":
        return []
    adv = _row_advantages(trainer_adv)
    sums = _group_sums(adv, gi)
    worst_group = max(sums, key=lambda g: abs(sums[g]))
    scale = float(adv[torch.isfinite(adv)].abs().max()) if bool(torch.isfinite(adv).any()) else 0.0
    if abs(sums[worst_group]) <= 1e-3 * max(scale, 1e-12) or not torch.isfinite(
        torch.tensor(sums[worst_group])
    ):
        return []
    return [
        dx.finding(
            check_id="diagnose.group_sums",
            stage="advantages",
            catalog_id="6",
            figure=abs(sums[worst_group]),
            tolerance=1e-3 * scale,
            where=dx.where(prompt=worst_group),
            explanation=(
                f"advantages do not sum to 0 within the true prompt groups (group {worst_group} sums to "
                f"{sums[worst_group]:.4g}); no simple regrouping explains it"
            ),
            likely_cause="group statistics taken over the wrong rows or a wrong baseline",
            fix="compute mean/std per prompt group using group_index (gather across processes first)",
            details={"group_sums": {str(k): v for k, v in sums.items()}},
            attach_to=failing,
        )
    ]


def affine_fit(got: torch.Tensor, want: torch.Tensor) -> tuple[float, float]:
    """Least-squares ``(a, b)`` with ``got ≈ a·want + b`` (float64)."""
    x, y = want.double().reshape(-1), got.double().reshape(-1)
    dx_, dy = x - x.mean(), y - y.mean()
    spread = float((dx_ * dx_).sum())
    a = (
        float((dx_ * dy).sum()) / spread if spread else 0.0
    )  # the normal equations, in closed form (deterministic)
    return a, float(y.mean()) - a * float(x.mean())


def detect_batch_restandardised(dx: Diagnosis) -> list[Finding]:
    """The trainer's advantages are the reference's under one affine map a·A + b for the whole batch: a second
    normalisation over the batch (whitening) on top of the configured one (A1: only the configured scale)."""
    unexplained = _unexplained_advantages(dx)
    if unexplained is None:
        return []
    failing, adv, ref_adv = unexplained
    finite = torch.isfinite(adv) & torch.isfinite(ref_adv)
    if adv.shape != ref_adv.shape or int(finite.sum()) < 3 or float(ref_adv[finite].std()) == 0.0:
        return []
    got, want = adv[finite].double(), ref_adv[finite].double()
    a, b = affine_fit(got, want)
    if not close(got, a * want + b, rtol=2e-3, atol=1e-4):
        return []
    whitened = (want - want.mean()) / want.std()
    is_whitening = close(got, whitened, rtol=2e-3, atol=1e-3)
    how = (
        "re-standardised over the whole batch ((A − mean) / std of the batch)"
        if is_whitening
        else f"mapped by one affine transform for the whole batch (A_trainer = {a:.4g}·A + {b:.4g})"
    )
    row, _, value = worst(adv - ref_adv)
    return [
        dx.finding(
            check_id="diagnose.advantages_rescaled",
            stage="advantages",
            catalog_id=None,
            figure=value,
            where=dx.where(row=row),
            explanation=(
                f"the trainer's advantages are the reference's ({dx.spec.scale_rewards!r} scaling) {how}: every "
                f"row is off by the same scale and shift (worst at {dx.where(row=row).describe()}, |Δ| {abs(value):.3g})"
            ),
            likely_cause=(
                "a second normalisation of the advantages over the batch after the configured one (whitening in a "
                "_generate_and_score_completions override or a data collator): the group baselines no longer "
                "sum to zero per prompt"
            ),
            fix="normalise once, as scale_rewards declares; drop the extra batch-level (A − mean) / std",
            details={"scale": float(f"{a:.6g}"), "shift": float(f"{b:.6g}"), "whitening": is_whitening},
            attach_to=failing,
        )
    ]
