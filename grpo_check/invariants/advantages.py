"""Advantage-stage invariants: finite, zero-sum groups, the std bound, ε negligible, degenerate groups."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from grpo_check.config import GRPOSpec
from grpo_check.findings import Verdict
from grpo_check.invariants._common import (
    FEW_ROWS,
    Groups,
    Outcome,
    argmax_2d,
    cached,
    count_true,
    few_groups,
    few_rows,
    finite_mask,
    finite_outcome,
    first_argmax,
    first_argmin,
    fmt,
    groups_of,
    inconclusive,
    known_finite,
    machine_eps,
    nan_max,
    not_applicable,
    num_generations,
    passed,
    row_advantages,
    rtol_atol,
    scalars_at,
    spec_or_default,
    total_rewards,
    unscorable_rows,
    where_fill,
)
from grpo_check.invariants.registry import register
from grpo_check.signatures import signature
from grpo_check.trace.model import TraceStep

_TOKEN_LEVEL = (
    "advantages vary along the tokens of a row (token-level advantages): group invariants do not apply"
)


@register(
    "advantages.finite",
    requires=("advantages",),
    catalog_ids=("8",),
    description="every advantage is finite",
    tolerance="exact",
    likely_cause="a NaN reward (or 0/0 from a zero std without epsilon) propagated into the group statistics",
    fix="exclude NaN rewards with nanmean/nanstd, add epsilon to the std, and nan_to_num the advantages of "
    "unscorable rows to 0",
)
def advantages_finite(step: TraceStep, spec: GRPOSpec | None, *, tolerance: float | None = None) -> Outcome:
    return finite_outcome(step, ("advantages",))


def _prepare(step: TraceStep, spec: GRPOSpec | None) -> tuple[torch.Tensor, Groups, int, int] | str:
    """(advantages (B,), groups, G, number of whole groups) or the reason the group checks cannot run
    (:func:`_whole` gives the whole-group flags).

    Shared by the group checks of one step (see ``step_cache``)."""
    return cached(("adv_prepare", id(step), id(spec)), lambda: _prepare_uncached(step, spec))


def _prepare_uncached(step: TraceStep, spec: GRPOSpec | None) -> tuple[torch.Tensor, Groups, int, int] | str:
    advantages = row_advantages(step["advantages"], step.get("completion_mask"))
    if advantages is None:
        return _TOKEN_LEVEL
    groups = groups_of(step["group_index"])
    if groups.inverse.numel() != advantages.numel():  # malformed inputs: the registry reports it
        raise ValueError(f"group_index has {groups.inverse.numel()} rows, advantages {advantages.numel()}")
    size = num_generations(spec, groups)
    whole_count = groups.count_of_size(size)
    if not whole_count:
        return (
            f"no whole group of G={size} rows in this step (sizes {sorted({int(c) for c in groups.count})})"
        )
    return advantages, groups, size, whole_count


def _whole(groups: Groups, size: int) -> torch.Tensor:
    """Per group: all ``size`` rows present (``count == size``), shared between the checks of one step."""
    return cached(("adv_whole", id(groups), size), lambda: groups.count == size)


def _group_sum(groups: Groups, clean: torch.Tensor) -> torch.Tensor:
    """Σ A per group of finite (B,) advantages, shared between the checks of one step."""
    return cached(("adv_group_sum", id(groups), clean), lambda: groups.sum(clean))


def _group_abs_sum(groups: Groups, clean: torch.Tensor) -> torch.Tensor:
    """Σ |A| per group of finite (B,) advantages, shared between the checks of one step."""
    return cached(("adv_group_abs_sum", id(groups), clean), lambda: groups.sum(clean.abs()))


def group_sums(groups: Groups, clean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Σ A, |Σ A|, Σ |A|) per group of finite (B,) advantages, shared between the checks of one step."""

    def compute() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sums = _group_sum(groups, clean)
        return sums, sums.abs(), _group_abs_sum(groups, clean)

    return cached(("adv_group_sums", id(groups), clean), compute)


def zero_sum_allowed(step: TraceStep, groups: Groups, clean: torch.Tensor) -> torch.Tensor:
    """atol + rtol·Σ|A| per group (dtype defaults of the advantages): how far from 0 a group's Σ A may be,
    shared between the checks of one step."""

    def compute() -> torch.Tensor:
        rtol, atol = rtol_atol(step["advantages"].dtype)
        return atol + rtol * group_sums(groups, clean)[2]

    return cached(("adv_sum_allowed", id(groups), clean, step["advantages"].dtype), compute)


def zero_sum_figures(
    step: TraceStep, groups: Groups, clean: torch.Tensor, tolerance: float | None = None
) -> tuple[list[float], list[float], list[float]]:
    """(Σ A, |Σ A|, allowed) per group as Python floats, for a few groups: :func:`group_sums`' and
    :func:`zero_sum_allowed`'s figures by the same IEEE operations, ``tolerance`` in place of atol when
    given; shared between the checks of one step."""
    if tolerance is not None:
        return _zero_sum_lists(step, groups, clean, tolerance)
    return cached(
        ("adv_zero_sum_figures", id(groups), clean, step["advantages"].dtype),
        lambda: _zero_sum_lists(step, groups, clean, None),
    )


def _zero_sum_lists(
    step: TraceStep, groups: Groups, clean: torch.Tensor, tolerance: float | None
) -> tuple[list[float], list[float], list[float]]:
    rtol, atol = rtol_atol(step["advantages"].dtype)
    base = atol if tolerance is None else tolerance
    rows = _row_list(groups, clean)
    if rows is None:
        sums, abs_sums = _group_sum(groups, clean).tolist(), _group_abs_sum(groups, clean).tolist()
    else:  # the same additions in the same order as Groups.sum's, |·| of float64s alike
        sums, abs_sums = groups.sum_list(rows), groups.sum_list(list(map(abs, rows)))
    allowed = [base + rtol * value for value in abs_sums]
    return sums, list(map(abs, sums)), allowed


def _row_list(groups: Groups, values: torch.Tensor) -> list[float] | None:
    """``values.tolist()`` for a few (B,) float64 CPU rows of ``groups`` (their per-group sums then go
    through :meth:`Groups.sum_list`), shared between the checks of one step; ``None`` otherwise."""
    if (
        values.dim() != 1
        or values.dtype is not torch.float64
        or not values.is_cpu
        or not 0 < values.shape[0] <= FEW_ROWS
        or values.shape[0] != groups.inverse.shape[0]
    ):
        return None
    return cached(("row_list", values), values.tolist)


@register(
    "advantages.group_sum_zero",
    requires=("advantages", "group_index"),
    catalog_ids=("6",),
    description="advantages of each prompt group sum to ≈ 0",
    tolerance="atol + rtol·Σ|A| of the group, rtol/atol of the advantages dtype (torch.testing defaults)",
    likely_cause=signature("repeat_not_interleave").cause,
    fix=signature("repeat_not_interleave").fix,
)
def group_sum_zero(step: TraceStep, spec: GRPOSpec | None, *, tolerance: float | None = None) -> Outcome:
    prepared = _prepare(step, spec)
    if isinstance(prepared, str):
        return inconclusive(prepared)
    advantages, groups, size, whole_count = prepared
    every_group = whole_count == groups.num_groups
    if known_finite(step, "advantages") or count_true(finite_mask(advantages)) == advantages.numel():
        # every advantage finite: every whole group is usable
        usable, usable_count, clean = None, whole_count, advantages  # usable: _whole(groups, size)
    else:
        finite = finite_mask(advantages)
        usable = _whole(groups, size) & (groups.sum((~finite).double()) == 0)
        usable_count = count_true(usable)
        every_group = usable_count == groups.num_groups
        if not usable_count:
            return inconclusive("every whole group has a non-finite advantage (see advantages.finite)")
        clean = torch.where(finite, advantages, torch.zeros_like(advantages))
    if few_groups(groups, clean):  # the same figures as the tensor operations below, as Python floats
        sums_list, magnitudes, allowances = zero_sum_figures(step, groups, clean, tolerance)
        if every_group:
            excesses = [
                magnitude - allowance for magnitude, allowance in zip(magnitudes, allowances, strict=True)
            ]
            shown = magnitudes
        else:
            flags = (_whole(groups, size) if usable is None else usable).tolist()
            excesses = [
                m - a if u else -math.inf for m, a, u in zip(magnitudes, allowances, flags, strict=True)
            ]
            shown = [m if u else 0.0 for m, u in zip(magnitudes, flags, strict=True)]
        worst = first_argmax(excesses)
        figure = nan_max(shown)
        worst_excess, worst_allowed = excesses[worst], allowances[worst]
        if worst_excess <= 0:
            return passed(f"{usable_count} group(s) sum to ≈ 0", figure, worst_allowed)
        failing = sum(1 for excess in excesses if excess > 0)
        worst_sum, worst_magnitude = sums_list[worst], magnitudes[worst]
    else:
        sums, sums_abs, abs_sums = group_sums(groups, clean)
        if tolerance is None:
            allowed = zero_sum_allowed(step, groups, clean)
        else:
            allowed = tolerance + rtol_atol(step["advantages"].dtype)[0] * abs_sums
        if usable is None:
            usable = _whole(groups, size)
        # every group usable: the masks below select everything, and where() returns the values unchanged
        excess = sums_abs - allowed if every_group else where_fill(usable, sums_abs - allowed, -torch.inf)
        worst = int(torch.argmax(excess))
        # max |Σ A| over the usable groups (≥ 1 of them): a masked max equals the boolean-indexed one
        figure = float((sums_abs if every_group else where_fill(usable, sums_abs, 0.0)).max())
        worst_excess, worst_allowed = scalars_at(excess, worst) + scalars_at(allowed, worst)
        if worst_excess <= 0:
            return passed(f"{usable_count} group(s) sum to ≈ 0", figure, worst_allowed)
        failing = int((excess > 0).sum())
        worst_sum, worst_magnitude = float(sums[worst]), float(sums[worst].abs())
        worst_allowed = float(allowed[worst])
    if usable is None:
        usable = _whole(groups, size)
    return Outcome(
        Verdict.FAIL,
        f"{failing} of {int(usable.sum())} group(s) have advantages that do not sum to 0 "
        f"(prompt {int(groups.values[worst])}: Σ A = {fmt(worst_sum)})",
        figure=worst_magnitude,
        tolerance=worst_allowed,
        row=groups.first_row(worst),
        details={"failing_groups": failing, "group_sums": _group_sum(groups, clean)[usable][:32].tolist()},
    )


def _std_bounds(size: int, spec: GRPOSpec) -> tuple[float, float]:
    """max |A| for a group of ``size`` under (sample std, population std), ignoring epsilon."""
    if size <= 1:
        return 0.0, 0.0
    factor = size / (size - 1) if spec.baseline == "rloo" else 1.0
    return factor * (size - 1) / math.sqrt(size), factor * math.sqrt(size - 1)


@register(
    "advantages.bounded",
    requires=("advantages", "group_index"),
    catalog_ids=("9",),
    description="|A| ≤ (G−1)/√G (sample std) or √(G−1) (population std), ignoring epsilon",
    tolerance="bound·(1 + rtol) + atol of the advantages dtype",
    likely_cause="degenerate std: a float residue (e.g. 1.6e-4 instead of 0) or a wrongly computed std "
    "divided the deviations, inflating advantages by orders of magnitude (or the statistics were taken "
    "over the wrong rows: see advantages.group_sum_zero)",
    fix="compute the std with a two-pass / torch.std formula, treat (near-)constant groups as zero-advantage, "
    "and add epsilon to the std",
)
def bounded(step: TraceStep, spec: GRPOSpec | None, *, tolerance: float | None = None) -> Outcome:
    effective = spec_or_default(spec)
    if effective.multi_objective_aggregation != "sum_then_normalize":
        return inconclusive("normalize_then_sum rescales by the batch std of summed z-scores: no group bound")
    if effective.scale_rewards != "group":
        return inconclusive(f"no closed-form bound with scale_rewards={effective.scale_rewards!r}")
    advantages = row_advantages(step["advantages"], step.get("completion_mask"))
    if advantages is None:
        return inconclusive(_TOKEN_LEVEL)
    groups = groups_of(step["group_index"])
    size = max(num_generations(spec, groups), groups.largest)
    sample_bound, population_bound = _std_bounds(size, effective)
    bound = population_bound if (spec is None or effective.std == "population") else sample_bound
    rtol, atol = rtol_atol(step["advantages"].dtype)
    allowed = tolerance if tolerance is not None else bound * (1 + rtol) + atol
    if known_finite(step, "advantages") and few_rows(advantages):  # max |A| of finite Python floats
        figure = max(map(abs, _rows(groups, advantages)))
        if figure <= allowed:
            return passed(f"max |A| = {fmt(figure)} within the G={size} bound", figure, allowed)
    if known_finite(step, "advantages"):  # the mask below is all True: where() would change nothing
        magnitude = advantages.abs()
    else:
        magnitude = where_fill(finite_mask(advantages), advantages.abs(), 0.0)
    figure = float(magnitude.max())  # the value at argmax (no NaN); the row is only needed on failure
    if figure <= allowed:
        return passed(f"max |A| = {fmt(figure)} within the G={size} bound", figure, allowed)
    row, _ = argmax_2d(magnitude)
    population_allowed = population_bound * (1 + rtol) + atol
    if figure <= population_allowed:
        return Outcome(
            Verdict.CONVENTION,
            f"max |A| = {fmt(figure)} exceeds the sample-std bound {fmt(sample_bound)} but not the "
            f"population-std bound {fmt(population_bound)}: the trainer normalises by the population std",
            figure=figure,
            tolerance=allowed,
            row=row,
            catalog_id="10",
            likely_cause="population std (verl/OpenRLHF style) where the spec says sample std (TRL): a "
            "convention, not a bug",
            fix="none needed; declare GRPOSpec(std='population') to hold the trainer to its own convention",
        )
    return Outcome(
        Verdict.FAIL,
        f"|A| = {fmt(figure)} exceeds the largest possible normalised advantage {fmt(bound)} for G={size} "
        f"({fmt(figure / bound) if bound else 'inf'}×)",
        figure=figure,
        tolerance=allowed,
        row=row,
        details={"bound_sample_std": sample_bound, "bound_population_std": population_bound, "G": size},
    )


@dataclasses.dataclass(frozen=True)
class GroupRewardStats:
    """What several advantage checks share about one step's groups (computed once per step)."""

    advantages: torch.Tensor
    """(B,) the trainer's advantages, float64."""
    rewards: torch.Tensor
    """(B,) total rewards."""
    groups: Groups
    """The prompt groups of the rows."""
    scorable_mask: torch.Tensor | None
    """(B,) rows whose reward and advantage are finite (``None``: all of them, see :attr:`scorable`)."""
    centred_tensor: torch.Tensor | None
    """(B,) reward − group mean over the scorable rows (0 elsewhere); ``None``: made from
    :attr:`centred_rows` on first use, see :attr:`centred`."""
    count_tensor: torch.Tensor | None
    """Per group: scorable rows (float64; ``None``: made from :attr:`count_rows` on first use, see
    :attr:`count`)."""
    size: int
    """G, the group size."""
    all_scorable: bool
    """Known without a look at ``scorable``: every reward and advantage finite (``scorable`` all True)."""
    every_group_whole: bool
    """Every group has all G rows (``whole`` all True)."""
    count_rows: list[float] | None = None
    """:attr:`count` as Python floats (``None``: from the tensor on first use, see :meth:`count_list`)."""
    centred_rows: list[float] | None = None
    """:attr:`centred` as Python floats, when made from them (else ``None``, see :meth:`centred_list`)."""

    @property
    def centred(self) -> torch.Tensor:
        """(B,) reward − group mean over the scorable rows (0 elsewhere), float64."""
        if self.centred_tensor is None:
            centred = torch.tensor(self.centred_rows, dtype=torch.float64, device=self.rewards.device)
            object.__setattr__(self, "centred_tensor", centred)
        return self.centred_tensor  # type: ignore[return-value]

    def centred_list(self) -> list[float]:
        """``centred.tolist()``, made once (do not modify it)."""
        if self.centred_rows is None:
            object.__setattr__(self, "centred_rows", _rows(self.groups, self.centred))
        return self.centred_rows  # type: ignore[return-value]

    def centred_few_groups(self) -> bool:
        """``few_groups(groups, centred)`` without making the tensor: made from rows, it is float64 on the
        CPU like the rewards those rows were read from."""
        return few_groups(self.groups, self.rewards if self.centred_tensor is None else self.centred_tensor)

    @property
    def count(self) -> torch.Tensor:
        """Per group: scorable rows (float64)."""
        if self.count_tensor is None:
            counts = torch.tensor(self.count_rows, dtype=torch.float64, device=self.rewards.device)
            object.__setattr__(self, "count_tensor", counts)
        return self.count_tensor  # type: ignore[return-value]

    def count_list(self) -> list[float]:
        """``count.tolist()``, made once (do not modify it)."""
        if self.count_rows is None:
            object.__setattr__(self, "count_rows", self.count.tolist())
        return self.count_rows  # type: ignore[return-value]

    @property
    def scorable(self) -> torch.Tensor:
        """(B,) rows whose reward and advantage are finite (an all-True mask made on first use)."""
        if self.scorable_mask is None:
            object.__setattr__(self, "scorable_mask", torch.ones_like(self.rewards, dtype=torch.bool))
        return self.scorable_mask  # type: ignore[return-value]

    @property
    def whole(self) -> torch.Tensor:
        """Per group: all G rows present (made on first use, shared per step)."""
        return _whole(self.groups, self.size)


def _group_reward_stats(step: TraceStep, spec: GRPOSpec | None) -> GroupRewardStats | str:
    """The step's :class:`GroupRewardStats`, or a reason they cannot be computed (shared per step)."""
    return cached(("adv_reward_stats", id(step), id(spec)), lambda: _group_reward_stats_uncached(step, spec))


def _centred_of_rows(groups: Groups, rows: list[float]) -> list[float]:
    """``rewards − groups.sum(rewards) / count`` per row (the row's group mean; every group ≥ 1 row) from the
    rows' finite float64 rewards as Python floats: the same sums, divisions and subtractions."""
    means = [total / float(size) for total, size in zip(groups.sum_list(rows), groups.sizes(), strict=True)]
    return [value - means[group] for value, group in zip(rows, groups.row_groups, strict=True)]


def _group_reward_stats_uncached(step: TraceStep, spec: GRPOSpec | None) -> GroupRewardStats | str:
    prepared = _prepare(step, spec)
    if isinstance(prepared, str):
        return prepared
    advantages, groups, size, whole_count = prepared
    rewards = total_rewards(step, spec)
    if rewards is None or rewards.numel() != advantages.numel():
        return "rewards do not align with advantages"
    every_group_whole = whole_count == groups.num_groups
    # the rewards tensor itself (not a sum of rewards_per_func) and the advantages known finite: scorable
    # is all True, the where() calls below change nothing, and Σ 1.0 over a group is its row count exactly
    if step.has("rewards") and known_finite(step, "rewards", "advantages"):
        rows = _row_list(groups, rewards)
        if rows is not None:  # a few rows: the same sums, divisions and subtractions as Python floats
            # the row counts as floats: count_f64's numbers (the tensors are made only if asked for)
            counts = [float(size) for size in groups.sizes()]
            centred_rows = _centred_of_rows(groups, rows)
            return GroupRewardStats(
                advantages,
                rewards,
                groups,
                None,
                None,
                None,
                size,
                True,
                every_group_whole,
                counts,
                centred_rows,
            )
        count = groups.count_f64(rewards.device)
        mean = groups.sum(rewards) / count  # (each group has ≥ 1 row: count.clamp(min=1) is count)
        # one group: mean[inverse] is mean broadcast, the same subtraction per row without the gather
        centred = rewards - mean if groups.num_groups == 1 else rewards - groups.expand(mean)
        return GroupRewardStats(
            advantages, rewards, groups, None, centred, count, size, True, every_group_whole
        )
    scorable = finite_mask(rewards) & finite_mask(advantages)  # the step's shared masks
    weight = scorable.double()
    count = groups.sum(weight)
    mean = groups.sum(where_fill(scorable, rewards, 0.0)) / count.clamp(min=1)
    centred = where_fill(scorable, rewards - groups.expand(mean), 0.0)
    return GroupRewardStats(
        advantages, rewards, groups, scorable, centred, count, size, False, every_group_whole
    )


def _rows(groups: Groups, values: torch.Tensor) -> list[float]:
    """``values.tolist()``, shared between the checks of one step where :func:`_row_list` keeps it."""
    rows = _row_list(groups, values)
    return values.tolist() if rows is None else rows


def _moment_lists(stats: GroupRewardStats, clean: torch.Tensor) -> tuple[list[float], list[float]]:
    """(``groups.sum(centred**2)``, ``groups.sum(clean * centred)``) as Python floats: for a few rows, the same
    products (a float64 square is x·x) and additions in the same order (:meth:`Groups.sum_list`)."""
    groups = stats.groups
    rows = stats.centred_rows if stats.centred_rows is not None else _row_list(groups, stats.centred)
    weights = _row_list(groups, clean)
    if rows is None or weights is None:
        centred = stats.centred
        return groups.sum(centred**2).tolist(), groups.sum(clean * centred).tolist()
    squares = groups.sum_list([value * value for value in rows])
    return squares, groups.sum_list([weight * value for weight, value in zip(weights, rows, strict=True)])


@register(
    "advantages.epsilon_negligible",
    requires=[("advantages", "group_index", "rewards"), ("advantages", "group_index", "rewards_per_func")],
    catalog_ids=("S2", "10"),
    description="where a group's rewards vary, advantages keep ≥ 50% of (r − mean)/std: epsilon only "
    "stabilises, it never dominates the std",
    tolerance="retention σ/(σ+ε) ≥ 0.5 for groups with σ > 10·min(ε, 1e-3)",
    likely_cause="advantage epsilon far too large (e.g. 1e4 instead of 1e-4): it dominates the std and the "
    "learning signal vanishes",
    fix="use epsilon 1e-4 … 1e-8 (TRL 1e-4, verl 1e-6, OpenRLHF 1e-8)",
)
def epsilon_negligible(step: TraceStep, spec: GRPOSpec | None, *, tolerance: float | None = None) -> Outcome:
    effective = spec_or_default(spec)
    if effective.multi_objective_aggregation != "sum_then_normalize":
        return inconclusive("advantages are not (r − mean)/std of the total reward under normalize_then_sum")
    stats = _group_reward_stats(step, spec)
    if isinstance(stats, str):
        return inconclusive(stats)
    advantages, rewards, groups = stats.advantages, stats.rewards, stats.groups
    # (stats.centred and stats.count: tensors made on first use, read where needed)
    clean = advantages if stats.all_scorable else where_fill(stats.scorable, advantages, 0.0)
    if effective.scale_rewards == "batch":
        scorable = stats.scorable
        batch_std = float(torch.std(rewards[scorable])) if int(scorable.sum()) > 1 else None
    else:
        batch_std = None
    threshold_std = 10 * min(effective.adv_epsilon, 1e-3)
    limit = tolerance if tolerance is not None else (0.5 if effective.scale_rewards != "batch" else 0.05)
    # a group whose advantages do not sum to 0 was normalised with other rows (advantages.group_sum_zero):
    # its slope says nothing about epsilon
    # the rloo rescaling (x / 1.0 is x exactly: no division otherwise)
    if effective.baseline == "rloo":
        count = stats.count
        factor = float(count.max() / (count.max() - 1).clamp(min=1))
    else:
        factor = 1.0
    # the same figures as the tensor operations below, as Python floats (whose division by 0 would raise
    # where torch's gives ±inf or NaN: no scorable row at all)
    # (Σ (r − mean)², Σ A·(r − mean)) per group share centred's dtype and device
    if stats.centred_few_groups() and factor != 0.0:
        counts = stats.count_list()
        square_sums, numerator_sums = _moment_lists(stats, clean)
        # x.clamp(min=m) is m where x < m, else x (NaN included); the divisor is ≥ 1. The square root stays
        # torch's (its float64 sqrt is not always math.sqrt's correctly rounded one), on as many numbers
        # (numpy's conversion of Python floats is exact and costs less than torch.tensor's)
        variances = [
            square / (1.0 if c - 1.0 < 1.0 else c - 1.0)
            for square, c in zip(square_sums, counts, strict=True)
        ]
        stds = torch.from_numpy(np.array(variances, dtype=np.float64)).sqrt().tolist()
        slopes = [n / (1e-300 if s < 1e-300 else s) for n, s in zip(numerator_sums, square_sums, strict=True)]
        if effective.scale_rewards == "group" or (effective.scale_rewards == "batch" and batch_std is None):
            retention = [slope * scale for slope, scale in zip(slopes, stds, strict=True)]
        elif effective.scale_rewards == "batch":
            retention = [slope * batch_std for slope in slopes]
        else:
            retention = [slope * 1.0 for slope in slopes]
        if effective.baseline == "rloo":
            retention = [value / factor for value in retention]
        _, magnitudes, allowances = zero_sum_figures(step, groups, clean)
        zero_sum = [m <= a for m, a in zip(magnitudes, allowances, strict=True)]
        if not stats.every_group_whole:
            zero_sum = [z and w for z, w in zip(zero_sum, stats.whole.tolist(), strict=True)]
        flags = [z and c >= 2.0 and s > threshold_std for z, c, s in zip(zero_sum, counts, stds, strict=True)]
        qualifying_count = sum(flags)
        if not qualifying_count:
            return not_applicable(f"no whole group whose rewards vary (std > {threshold_std:g})")
        masked_values = [value if flag else math.inf for value, flag in zip(retention, flags, strict=True)]
        worst = first_argmin(masked_values)
        figure = retention[worst]
        if figure >= limit:
            return passed(
                f"{qualifying_count} group(s) with varying rewards keep ≥ {limit:g} of the normalised signal",
                figure,
                limit,
            )
        failing = sum(1 for value in masked_values if value < limit)
        std, worst_slope = stds[worst], slopes[worst]
    else:
        centred, count = stats.centred, stats.count
        squares, numerators = groups.sum(centred**2), groups.sum(clean * centred)
        sample_std = torch.sqrt(squares / (count - 1.0).clamp(min=1.0))
        slope = numerators / squares.clamp(min=1e-300)
        if effective.scale_rewards == "group":
            scale = sample_std
        elif effective.scale_rewards == "batch":
            scale = torch.full_like(sample_std, batch_std) if batch_std is not None else sample_std
        else:
            scale = torch.ones_like(sample_std)
        retention_tensor = slope * scale
        if effective.baseline == "rloo":
            retention_tensor = retention_tensor / factor
        zero_sum_tensor = group_sums(groups, clean)[1] <= zero_sum_allowed(step, groups, clean)
        qualifying = (stats.whole & zero_sum_tensor if not stats.every_group_whole else zero_sum_tensor) & (
            count >= 2.0
        )
        qualifying = qualifying & (sample_std > threshold_std)
        qualifying_count = count_true(qualifying)
        if not qualifying_count:
            return not_applicable(f"no whole group whose rewards vary (std > {threshold_std:g})")
        masked = where_fill(qualifying, retention_tensor, torch.inf)
        worst = int(torch.argmin(masked))
        (figure,) = scalars_at(retention_tensor, worst)
        if figure >= limit:
            return passed(
                f"{qualifying_count} group(s) with varying rewards keep ≥ {limit:g} of the normalised signal",
                figure,
                limit,
            )
        failing = int((masked < limit).sum())
        std, worst_slope = float(sample_std[worst]), float(slope[worst])
    in_group = groups.inverse == worst
    row = int(torch.argmax(where_fill(in_group, stats.centred.abs(), -1.0)))
    if figure <= 0:
        return Outcome(
            Verdict.FAIL,
            f"{failing} group(s): advantages anti-correlate with rewards (prompt {int(groups.values[worst])}: "
            f"slope {fmt(worst_slope)})",
            figure=figure,
            tolerance=limit,
            row=row,
            likely_cause="advantage sign flipped (rewards − mean reversed) or advantages misaligned with rows",
            fix="A = (r − mean)/(std + ε), with rows in the same order as the rewards",
        )
    eps_effective = std * (1 / figure - 1) if effective.scale_rewards == "group" else None
    eps_text = f"; effective epsilon ≈ {fmt(eps_effective)}" if eps_effective is not None else ""
    return Outcome(
        Verdict.FAIL,
        f"{failing} group(s) with varying rewards have advantages ≈ 0: prompt {int(groups.values[worst])} "
        f"(reward std {fmt(std)}) keeps {fmt(figure)} of (r − mean)/std{eps_text}",
        figure=figure,
        tolerance=limit,
        row=row,
        details={"effective_epsilon": eps_effective, "failing_groups": failing},
    )


@register(
    "advantages.constant_group_zero",
    requires=[("advantages", "group_index", "rewards"), ("advantages", "group_index", "rewards_per_func")],
    catalog_ids=("9",),
    description="a group whose rewards are all equal (or with < 2 scorable rows) gets A = 0",
    tolerance="atol of the advantages dtype + min(1e-2, G·eps(rewards)·max|r|/ε) for the mean's rounding",
    likely_cause="degenerate std: an all-equal group was divided by a float residue or by zero, so "
    "rounding noise became a full-size advantage",
    fix="set A = 0 where the group std is (close to) zero, or compute r − mean exactly and add epsilon",
)
def constant_group_zero(step: TraceStep, spec: GRPOSpec | None, *, tolerance: float | None = None) -> Outcome:
    effective = spec_or_default(spec)
    if effective.multi_objective_aggregation != "sum_then_normalize":
        return inconclusive("under normalize_then_sum an all-equal total can hide varying reward functions")
    stats = _group_reward_stats(step, spec)
    if isinstance(stats, str):
        return inconclusive(stats)
    advantages, rewards, groups, size = stats.advantages, stats.rewards, stats.groups, stats.size
    if stats.all_scorable and few_rows(rewards) and not any(_constant_groups(stats)):
        return not_applicable("no group with all-equal rewards")  # what the operations below find
    if stats.all_scorable:  # every reward finite: the masks below are all True (see _group_reward_stats)
        high, low, count = groups.amax(rewards), groups.amin(rewards), stats.count
        scorable = stats.scorable
    else:  # group membership by rewards alone: a NaN advantage is a violation here
        scorable = finite_mask(rewards)
        high = groups.amax(where_fill(scorable, rewards, -torch.inf))
        low = groups.amin(where_fill(scorable, rewards, torch.inf))
        count = groups.sum(scorable.double())
    constant = (high == low) | (count < 2.0)
    constant = constant if stats.every_group_whole else stats.whole & constant
    constant_count = count_true(constant)
    if not constant_count:
        return not_applicable("no group with all-equal rewards")
    finite_rewards = torch.where(scorable, rewards, torch.nan)
    reward_dtype = step["rewards"].dtype if step.has("rewards") else step["rewards_per_func"].dtype
    _, atol = rtol_atol(step["advantages"].dtype)
    reward_scale = float(torch.nan_to_num(finite_rewards.abs(), nan=0.0).max())
    rounding = size * machine_eps(reward_dtype) * reward_scale
    if effective.scale_rewards != "none":
        rounding = min(1e-2, rounding / effective.adv_epsilon) if effective.adv_epsilon > 0 else 0.0
    allowed = tolerance if tolerance is not None else atol + rounding
    in_constant = groups.expand(constant)
    magnitude = where_fill(in_constant & torch.isfinite(advantages), advantages.abs(), -1.0)
    magnitude = torch.where(in_constant & ~torch.isfinite(advantages), torch.inf, magnitude)
    row, _ = argmax_2d(magnitude)
    figure = float(magnitude[row])
    if figure <= allowed:
        return passed(f"{constant_count} all-equal group(s) carry zero advantage", figure, allowed)
    return Outcome(
        Verdict.FAIL,
        f"an all-equal reward group has |A| = {fmt(figure)} (prompt {int(groups.values[groups.inverse[row]])}, "
        f"reward {fmt(float(rewards[row]))}); it must be 0",
        figure=figure,
        tolerance=allowed,
        row=row,
        details={"constant_groups": int(constant.sum())},
    )


def _constant_groups(stats: GroupRewardStats) -> list[bool]:
    """``(amax == amin) | (count < 2)`` per group (∧ whole), from a few finite rewards as Python floats: a
    group's finite values have equal max and min exactly when each equals the group's first."""
    groups = stats.groups
    first: list[float | None] = [None] * groups.num_groups
    equal = [True] * groups.num_groups
    for value, group in zip(_rows(groups, stats.rewards), groups.row_groups, strict=True):
        seen = first[group]
        if seen is None:
            first[group] = value
        elif value != seen:
            equal[group] = False
    flags = [same or count < 2.0 for same, count in zip(equal, stats.count_list(), strict=True)]
    if stats.every_group_whole:
        return flags
    return [flag and whole for flag, whole in zip(flags, stats.whole.tolist(), strict=True)]


@register(
    "advantages.unscorable_zero",
    requires=[("advantages", "rewards_per_func"), ("advantages", "rewards")],
    catalog_ids=("8",),
    description="unscorable rows (all rewards NaN) carry A = 0 and do not leak into their group: the other "
    "rows stay finite and sum to 0",
    tolerance="exact 0 on unscorable rows; group sums as advantages.group_sum_zero",
    likely_cause="NaN/None rewards leak into the group statistics (collapsed to 0 by nansum, or propagated)",
    fix="mark unscorable rows NaN, use nanmean/nanstd for the group statistics, then nan_to_num the "
    "advantages to 0",
)
def unscorable_zero(step: TraceStep, spec: GRPOSpec | None, *, tolerance: float | None = None) -> Outcome:
    rows = _rows_known_scorable(step)
    unscorable = unscorable_rows(step) if rows is None else None
    advantages = row_advantages(step["advantages"], step.get("completion_mask"))
    if advantages is None:
        return inconclusive(_TOKEN_LEVEL)
    if rows is not None and rows == advantages.numel():  # the all-False mask unscorable_rows would give
        return not_applicable("no unscorable row")
    if unscorable is None:
        unscorable = unscorable_rows(step)
    if unscorable is None or unscorable.numel() != advantages.numel():
        return inconclusive("rewards do not align with advantages")
    if not bool(unscorable.any()):
        return not_applicable("no unscorable row")
    own = where_fill(unscorable, torch.nan_to_num(advantages.abs(), nan=torch.inf), -1.0)
    row, _ = argmax_2d(own)
    if float(own[row]) > (tolerance or 0.0):
        return Outcome(
            Verdict.FAIL,
            f"{int((own > (tolerance or 0.0)).sum())} unscorable row(s) carry a non-zero advantage "
            f"(A = {fmt(float(advantages[row]))})",
            figure=float(own[row]),
            tolerance=tolerance or 0.0,
            row=row,
        )
    if not step.has("group_index"):
        return passed(
            f"{int(unscorable.sum())} unscorable row(s) carry A = 0 (group leak not checked)", 0.0, 0.0
        )
    groups = groups_of(step["group_index"])
    touched = groups.sum(unscorable.double()) > 0
    rows_touched = groups.expand(touched) & ~unscorable
    nonfinite = rows_touched & ~torch.isfinite(advantages)
    if bool(nonfinite.any()):
        row = int(nonfinite.int().argmax())
        return Outcome(
            Verdict.FAIL,
            f"NaN reward leaked: {int(nonfinite.sum())} scorable row(s) in groups with an unscorable row have "
            "non-finite advantages",
            figure=float(nonfinite.sum()),
            tolerance=0.0,
            row=row,
        )
    clean = torch.where(unscorable, 0.0, advantages)
    sums = groups.sum(clean)
    rtol, atol = rtol_atol(step["advantages"].dtype)
    allowed = atol + rtol * groups.sum(clean.abs())
    excess = where_fill(touched, sums.abs() - allowed, -torch.inf)
    worst = int(torch.argmax(excess))
    if float(excess[worst]) > 0:
        return Outcome(
            Verdict.FAIL,
            f"NaN reward leaked into prompt {int(groups.values[worst])}: the scorable rows' advantages sum to "
            f"{fmt(float(sums[worst]))} (the unscorable row was counted in the mean/std)",
            figure=float(sums[worst].abs()),
            tolerance=float(allowed[worst]),
            row=groups.first_row(worst),
        )
    return passed(
        f"{int(unscorable.sum())} unscorable row(s) carry A = 0 and their groups still sum to 0",
        float(sums[touched].abs().max()),
        float(allowed[worst]),
    )


def _rows_known_scorable(step: TraceStep) -> int | None:
    """B when every row is known scorable without a look at the rewards (each reward tensor present known
    finite, with shapes ``unscorable_rows`` reads as B rows and ≥ 1 reward function), else ``None``."""
    names = [name for name in ("rewards_per_func", "rewards") if step.has(name)]
    if not names or not known_finite(step, *names):
        return None
    rows = None
    if step.has("rewards_per_func"):
        per_func = step["rewards_per_func"]
        if per_func.dim() not in (1, 2) or per_func.numel() == 0:
            return None
        rows = per_func.shape[0]
    if step.has("rewards"):
        count = step["rewards"].numel()
        if rows is not None and count != rows:
            return None
        rows = count
    return rows


@register(
    "advantages.sign_follows_rewards",
    requires=[("advantages", "group_index", "rewards"), ("advantages", "group_index", "rewards_per_func")],
    catalog_ids=("6",),
    description="within a group, A > 0 exactly for rewards above the group mean and A < 0 below it",
    tolerance="rows with |r − mean| ≤ rtol·max|r| or |A| ≤ atol (dtype defaults) are not judged",
    likely_cause="advantages misaligned with their rows (shuffled or gathered in a different order than the "
    "rewards), or the advantage sign flipped",
    fix="compute advantages from the rewards of the same rows, in the same order, and gather/slice both "
    "with the same index",
)
def sign_follows_rewards(
    step: TraceStep, spec: GRPOSpec | None, *, tolerance: float | None = None
) -> Outcome:
    effective = spec_or_default(spec)
    if effective.multi_objective_aggregation != "sum_then_normalize":
        return inconclusive("the sign follows each reward function separately under normalize_then_sum")
    stats = _group_reward_stats(step, spec)
    if isinstance(stats, str):
        return inconclusive(stats)
    advantages, rewards, groups = stats.advantages, stats.rewards, stats.groups
    _, atol = rtol_atol(step["advantages"].dtype)
    reward_rtol, _ = rtol_atol(
        step["rewards"].dtype if step.has("rewards") else step["rewards_per_func"].dtype
    )
    if stats.all_scorable and few_rows(rewards):  # the exits below from Python floats, as they would find
        decided = _sign_exit(stats, 16 * reward_rtol, tolerance if tolerance is not None else atol)
        if decided is not None:
            return decided
    centred = stats.centred
    if stats.all_scorable:  # scorable all True: the masked max is the plain one, the & changes nothing
        scale = float(rewards.abs().max())
        judged = centred.abs() > 16 * reward_rtol * max(scale, 1e-12)
    else:
        scorable = stats.scorable
        scale = float(where_fill(scorable, rewards.abs(), 0.0).max()) if bool(scorable.any()) else 0.0
        judged = scorable & (centred.abs() > 16 * reward_rtol * max(scale, 1e-12))
    judged = judged & (advantages.abs() > (tolerance if tolerance is not None else atol))
    if not stats.every_group_whole:
        judged = groups.expand(stats.whole) & judged
    judged_count = count_true(judged)
    if not judged_count:
        return not_applicable("no row clearly above or below its group mean")
    wrong = judged & (torch.sign(advantages) != torch.sign(centred))
    if not count_true(wrong):
        return passed(f"{judged_count} row(s): sign(A) = sign(r − group mean)", 0.0, 0.0)
    row = int(wrong.int().argmax())
    return Outcome(
        Verdict.FAIL,
        f"{int(wrong.sum())} of {int(judged.sum())} row(s) have an advantage of the wrong sign "
        f"(row {row}: r − mean = {fmt(float(centred[row]))}, A = {fmt(float(advantages[row]))})",
        figure=float(wrong.sum()),
        tolerance=0.0,
        row=row,
    )


def _sign_exit(stats: GroupRewardStats, relative: float, least: float) -> Outcome | None:
    """sign_follows_rewards' not-applicable or pass from a few finite rows as Python floats (``None``: some
    judged row has the wrong sign, left to the tensor operations to locate): a row is judged where
    |r − mean| > relative·max(max |r|, 1e-12) and |A| > ``least``, wrong where sign(A) ≠ sign(r − mean)."""
    rewards = _rows(stats.groups, stats.rewards)
    threshold = relative * max(max(map(abs, rewards)), 1e-12)
    if stats.every_group_whole:
        in_whole = None
    else:
        whole = stats.whole.tolist()
        in_whole = [whole[group] for group in stats.groups.row_groups]
    judged = wrong = 0
    for row, (advantage, centred) in enumerate(
        zip(_rows(stats.groups, stats.advantages), stats.centred_list(), strict=True)
    ):
        if abs(centred) > threshold and abs(advantage) > least and (in_whole is None or in_whole[row]):
            judged += 1
            wrong += (advantage > 0) != (centred > 0)  # both non-zero and finite: their signs differ
    if not judged:
        return not_applicable("no row clearly above or below its group mean")
    if not wrong:
        return passed(f"{judged} row(s): sign(A) = sign(r − group mean)", 0.0, 0.0)
    return None
