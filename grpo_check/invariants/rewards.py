"""Rewards-stage invariants: finiteness (NaN only as the unscorable marker), total = weighted sum."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from grpo_check.config import GRPOSpec
from grpo_check.findings import Verdict
from grpo_check.invariants._common import (
    Outcome,
    argmax_2d,
    cached,
    f64,
    few_rows,
    finite_outcome,
    first_argmax,
    flat_f64,
    inconclusive,
    known_finite,
    malformed,
    nan_max,
    passed,
    plain,
    reward_weights,
    rtol_atol,
    scalars_at,
    where_fill,
)
from grpo_check.invariants.registry import register
from grpo_check.trace.model import TraceStep


@register(
    "rewards.finite",
    requires=[("rewards_per_func",), ("rewards",), ("reward_weights",)],
    catalog_ids=("8",),
    description="rewards are finite; NaN only marks an unscorable row (every reward function returned None)",
    tolerance="exact",
    likely_cause="a reward function returned inf/NaN for a scorable completion, or NaN was summed with + "
    "instead of nansum",
    fix="return None (NaN) only for unscorable completions, sum with nansum, and keep every reward finite",
)
def rewards_finite(step: TraceStep, spec: GRPOSpec | None, *, tolerance: float | None = None) -> Outcome:
    # the allowed-NaN masks are built only for a tensor that holds a non-finite value
    allow: dict[str, Callable[[], torch.Tensor]] = {}
    if step.has("rewards_per_func"):
        per_func = plain(step["rewards_per_func"])
        allow["rewards_per_func"] = lambda: torch.ones_like(
            per_func, dtype=torch.bool
        )  # NaN = "not applicable"
        # (B, F): malformed shapes raise here, as always (a (B, F) tensor is that already)
        rows = per_func if per_func.dim() == 2 else per_func.reshape(per_func.shape[0], -1)
        allow["rewards"] = lambda: torch.isnan(rows).all(1)
    else:
        rewards = step.get("rewards")
        allow["rewards"] = lambda: torch.ones(
            rewards.numel() if rewards is not None else 0,
            dtype=torch.bool,
            device=None if rewards is None else rewards.device,
        )
    return finite_outcome(step, ("rewards_per_func", "rewards", "reward_weights"), allow_nan=allow)


@register(
    "rewards.total_is_weighted_sum",
    requires=("rewards", "rewards_per_func"),
    catalog_ids=("8",),
    description="total reward = nansum(rewards_per_func × reward_weights) on scorable rows",
    tolerance="rtol/atol of the rewards dtype (torch.testing defaults), scaled by Σ|w·r|",
    likely_cause="reward weights not applied (or applied twice), NaN rewards not summed with nansum, or "
    "rewards misaligned with completions",
    fix="rewards = (rewards_per_func * reward_weights).nansum(dim=1) for the rows the functions scored",
)
def total_is_weighted_sum(
    step: TraceStep, spec: GRPOSpec | None, *, tolerance: float | None = None
) -> Outcome:
    if spec is not None and spec.multi_objective_aggregation != "sum_then_normalize":
        return inconclusive("total reward is not a weighted sum under normalize_then_sum")
    per_func = f64(step["rewards_per_func"])
    per_func = per_func.unsqueeze(1) if per_func.dim() == 1 else per_func
    total = flat_f64(step["rewards"])
    if total.shape[0] != per_func.shape[0]:
        return malformed(f"rewards has {total.shape[0]} rows, rewards_per_func {per_func.shape[0]}")
    # unit weights (none captured or configured): x · 1.0 is x exactly, so no product is formed
    unit = not step.has("reward_weights") and (spec is None or spec.reward_weights is None)
    weighted = per_func if unit else per_func * reward_weights(step, spec, per_func.shape[1], per_func.device)
    expected = weighted.nansum(1)
    # no NaN in either (and a row of rewards_per_func to look at): every row scorable, no mask to apply
    every_row = per_func.dim() == 2 and per_func.shape[1] > 0
    every_row = every_row and known_finite(step, "rewards_per_func", "rewards")
    if not every_row:
        scorable = ~torch.isnan(per_func).all(1) & ~torch.isnan(total)
        if not bool(scorable.any()):
            return inconclusive("no scorable row")
    rtol, atol = rtol_atol(step["rewards"].dtype)
    if few_rows(total):  # per-row figures as Python floats: the same IEEE operations as below
        # (the list keyed as the advantage checks key the rows they read: made once per step)
        totals, sums = cached(("row_list", total), total.tolist), expected.tolist()
        if unit and every_row and per_func.shape[1] <= 2:
            # Σ|r| of one or two finite values per row: |a| + |b| in either order and 0 + |a| are |a| + |b|
            # and |a| exactly (non-negative terms), so the rows' own floats give nansum's numbers
            scales = [sum(map(abs, row)) for row in per_func.tolist()]
        else:
            scales = weighted.abs().nansum(1).tolist()
        allowances = [atol + rtol * value for value in scales]
        errors = [abs(t - e) for t, e in zip(totals, sums, strict=True)]
        if every_row:
            excesses = [error - allowance for error, allowance in zip(errors, allowances, strict=True)]
        else:
            flags = scorable.tolist()
            excesses = [e - a if f else -math.inf for e, a, f in zip(errors, allowances, flags, strict=True)]
            # max |error| over the scorable rows (≥ 1 of them): a masked max equals the boolean-indexed one
            errors_shown = [e if f else 0.0 for e, f in zip(errors, flags, strict=True)]
        row = first_argmax(excesses)
        if excesses[row] <= 0:
            figure = nan_max(errors if every_row else errors_shown)
            return passed("total reward equals the weighted sum", figure, allowances[row])
        error, row_allowed, row_total, row_expected = errors[row], allowances[row], totals[row], sums[row]
    else:
        allowed = atol + rtol * weighted.abs().nansum(1)
        error_abs = (total - expected).abs()
        excess = error_abs - allowed if every_row else where_fill(scorable, error_abs - allowed, -torch.inf)
        row, _ = argmax_2d(excess)
        row_excess, row_allowed = scalars_at(excess, row) + scalars_at(allowed, row)
        if row_excess <= 0:
            # max |error| over the scorable rows (≥ 1 of them): a masked max equals the boolean-indexed one
            figure = error_abs if every_row else where_fill(scorable, error_abs, 0.0)
            return passed("total reward equals the weighted sum", float(figure.max()), row_allowed)
        error, row_total, row_expected = float(error_abs[row]), float(total[row]), float(expected[row])
    return Outcome(
        Verdict.FAIL,
        f"total reward {row_total:.6g} ≠ weighted sum {row_expected:.6g} of rewards_per_func",
        figure=error,
        tolerance=row_allowed,
        row=row,
        details={"weights": reward_weights(step, spec, per_func.shape[1], per_func.device).tolist()},
    )
