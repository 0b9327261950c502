"""Legitimate convention differences between GRPO implementations, told apart from bugs.

Two implementations can both be correct and still disagree on advantages:

* **std convention** — sample std (Bessel, TRL) vs population std (verl, OpenRLHF). Per group the advantages
  differ by the constant factor √((G−1)/G) (or its inverse).
* **epsilon size** — ε added to the std "for numerical stability" (TRL 1e-4, verl 1e-6, OpenRLHF 1e-8).
  Per group the ratio is (σ+ε_ref)/(σ+ε_impl), within a hair of 1.

Both are *conventions* (bug-catalog #10). An ε that is not small against the typical group std (e.g. 1e4,
bug-catalog S2) is a bug, even though its signature — a constant per-group factor σ/(σ+ε) — looks the same.
:func:`classify_advantage_scale` solves for the implied (std convention, ε) and decides which it is.

Example::

    >>> import torch
    >>> from grpo_check.diagnose.conventions import classify_advantage_scale
    >>> rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.2, 0.9, 0.1])
    >>> group_index = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    >>> def adv(std_unbiased, eps):
    ...     out = torch.empty(8, dtype=torch.float64)
    ...     for g in (0, 1):
    ...         r = rewards[group_index == g].double()
    ...         out[group_index == g] = (r - r.mean()) / (r.std(unbiased=std_unbiased) + eps)
    ...     return out
    >>> m = classify_advantage_scale(adv(False, 1e-4), adv(True, 1e-4), rewards, group_index, "sample", 1e-4)
    >>> (m.std, m.is_convention)
    ('population', True)
    >>> m = classify_advantage_scale(adv(True, 1e4), adv(True, 1e-4), rewards, group_index, "sample", 1e-4)
    >>> (m.is_convention, round(m.epsilon))
    (False, 10000)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch


@dataclasses.dataclass
class AdvantageScaleMatch:
    """What a per-group constant advantage ratio implies.

    ``per_group_ratio`` maps group id → A_impl/A_ref; ``std`` and ``epsilon`` are the implied convention of
    the implementation; ``is_convention`` says whether that is a legitimate difference (ε for stability only)
    or a bug; ``worst_group`` is the group furthest from ratio 1.
    """

    std: str
    epsilon: float
    per_group_ratio: dict[int, float]
    is_convention: bool
    worst_group: int
    typical_std: float
    explanation: str

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["per_group_ratio"] = {str(k): v for k, v in self.per_group_ratio.items()}
        return out


def group_stats(rewards: torch.Tensor, group_index: torch.Tensor) -> dict[int, dict[str, float]]:
    """Per group: n (finite rewards), mean, sample std, population std."""
    stats: dict[int, dict[str, float]] = {}
    r = rewards.detach().double().reshape(-1)
    gi = group_index.reshape(-1)
    for g in torch.unique(gi).tolist():
        vals = r[(gi == g) & torch.isfinite(r)]
        n = int(vals.numel())
        mean = float(vals.mean()) if n else math.nan
        pop = float(vals.std(unbiased=False)) if n else math.nan
        sample = float(vals.std(unbiased=True)) if n > 1 else math.nan
        stats[int(g)] = {"n": n, "mean": mean, "sample": sample, "population": pop}
    return stats


def per_group_ratio(
    impl: torch.Tensor, ref: torch.Tensor, group_index: torch.Tensor, rtol: float = 1e-3
) -> dict[int, float] | None:
    """A_impl/A_ref per group if it is a constant per group (least squares, residual ≤ rtol), else None.

    Groups whose reference advantages are all ~0 (degenerate) are skipped.
    """
    a = impl.detach().double().reshape(-1)
    b = ref.detach().double().reshape(-1)
    gi = group_index.reshape(-1)
    scale = float(b[torch.isfinite(b)].abs().max()) if bool(torch.isfinite(b).any()) else 0.0
    if scale == 0.0:
        return None
    out: dict[int, float] = {}
    for g in torch.unique(gi).tolist():
        sel = (gi == g) & torch.isfinite(a) & torch.isfinite(b)
        ag, bg = a[sel], b[sel]
        denom = float((bg * bg).sum())
        if denom <= (1e-9 * scale) ** 2:
            continue
        ratio = float((ag * bg).sum()) / denom
        residual = float((ag - ratio * bg).abs().max())
        if residual > rtol * max(float(bg.abs().max()) * max(abs(ratio), 1e-12), 1e-12) + 1e-9:
            return None
        out[int(g)] = ratio
    return out or None


def classify_advantage_scale(
    impl_advantages: torch.Tensor,
    ref_advantages: torch.Tensor,
    rewards: torch.Tensor,
    group_index: torch.Tensor,
    spec_std: str,
    spec_epsilon: float,
    *,
    rtol: float = 1e-3,
    stability_fraction: float = 1e-2,
) -> AdvantageScaleMatch | None:
    """Explain a per-group constant advantage ratio as (std convention, ε) of the implementation.

    Returns ``None`` when the difference is not a per-group constant factor (then it is not a convention
    difference of this kind), or when the ratio is 1 everywhere. ``is_convention`` is true when the implied
    ε is "for stability only": ``0 ≤ ε ≤ stability_fraction × typical group std``.
    """
    ratios = per_group_ratio(impl_advantages, ref_advantages, group_index, rtol=rtol)
    if not ratios:
        return None
    if all(abs(r - 1.0) <= 1e-9 for r in ratios.values()):
        return None
    eps_rtol = max(1e-4, rtol / 10)
    stats = group_stats(rewards, group_index)
    spec_sigma = {g: stats[g][spec_std] for g in ratios}
    stds = [s for s in spec_sigma.values() if math.isfinite(s) and s > 0]
    typical = float(sorted(stds)[len(stds) // 2]) if stds else math.nan
    worst = max(ratios, key=lambda g: abs(math.log(abs(ratios[g]))) if ratios[g] != 0 else math.inf)
    other_std = "population" if spec_std == "sample" else "sample"
    best: tuple[float, str, float] | None = None  # (badness, std, eps)
    for std_name in (spec_std, other_std):
        implied = []
        for g, ratio in ratios.items():
            s_ref, s_impl = spec_sigma[g], stats[g][std_name]
            if not (math.isfinite(s_ref) and math.isfinite(s_impl)) or ratio <= 0:
                implied = []
                break
            implied.append(((s_ref + spec_epsilon) / ratio - s_impl, s_ref))
        if not implied:
            continue
        eps_values = [e for e, _ in implied]
        eps_mid = sorted(eps_values)[len(eps_values) // 2]
        spread = max(abs(e - eps_mid) / (eps_rtol * (s + abs(eps_mid)) + 1e-7) for e, s in implied)
        if spread > 1.0:
            continue
        # prefer the spec's own std convention when both fit equally (single group: ambiguous)
        badness = abs(eps_mid) + (0.0 if std_name == spec_std else 1e-12)
        if eps_mid < -(eps_rtol * typical + 1e-7):
            badness += 1e6
        if best is None or badness < best[0]:
            best = (badness, std_name, eps_mid)
    if best is None:
        return None
    _, std_name, eps = best
    eps_for_test = max(eps, 0.0) if eps > -(eps_rtol * typical + 1e-7) else eps
    stable = 0.0 <= eps_for_test <= stability_fraction * typical if math.isfinite(typical) else False
    if std_name != spec_std and abs(eps - spec_epsilon) <= eps_rtol * typical + 1e-7:
        what = f"{std_name} std instead of {spec_std} std (per-group factor √((G−1)/G))"
    elif std_name != spec_std:
        what = f"{std_name} std instead of {spec_std} std and ε ≈ {eps:.3g} instead of {spec_epsilon:.3g}"
    else:
        what = f"ε ≈ {eps:.3g} added to the group std instead of {spec_epsilon:.3g}"
    if stable:
        explanation = (
            f"advantages differ from the reference by a constant factor per group consistent with {what}; "
            f"ε is small against the typical group std {typical:.3g}, so this is a convention difference "
            "(bug-catalog #10), not a bug"
        )
    else:
        explanation = (
            f"advantages differ from the reference by a constant factor per group (group {worst}: "
            f"×{ratios[worst]:.4g}) consistent with {what}; ε is not small against the typical group std "
            f"{typical:.3g}, so it is not there 'for stability only': it scales the learning signal"
        )
    return AdvantageScaleMatch(
        std=std_name,
        epsilon=float(eps),
        per_group_ratio=ratios,
        is_convention=bool(stable),
        worst_group=int(worst),
        typical_std=typical,
        explanation=explanation,
    )
