"""Re-derivation of the advantages on unscorable rows: a row whose every reward is NaN gets advantage 0
and stays out of its group's statistics."""

from __future__ import annotations

import numpy as np
import torch

from grpo_check._step_cache import host_view
from grpo_check.config import GRPOSpec
from grpo_check.findings import Finding, Verdict
from grpo_check.rederive.checks_common import _finding, _not_applicable, _not_captured, _register
from grpo_check.rederive.derive import (
    unscorable,
)
from grpo_check.rederive.inputs import (
    tensor_or_none,
)
from grpo_check.trace.model import Trace, TraceStep

# the float dtypes numpy views (the others ask torch), and up to how many elements Python floats are read
_HOST_FLOATS = frozenset({torch.float16, torch.float32, torch.float64})
_PY_ELEMENTS = 256


def _no_unscorable_row(rewards: torch.Tensor, advantages: torch.Tensor) -> bool:
    """True when a small CPU step with as many reward rows as advantages has no row whose every reward is NaN
    (what most steps show; the same test as :func:`unscorable` in numpy); False means "ask torch"."""
    rows = advantages.shape[0] if advantages.dim() == 2 else advantages.numel()
    if rewards.dim() not in (1, 2) or rewards.shape[0] != rows:
        return False
    if (
        rewards.dtype in _HOST_FLOATS
        and rewards.is_cpu
        and not rewards.requires_grad
        and rewards.numel() <= _PY_ELEMENTS
    ):  # Python floats (an exact conversion): a row whose sum is no NaN holds a value that is no NaN
        values = rewards.tolist()
        if rewards.dim() == 1:
            return not any(value != value for value in values)
        for row in values:
            if not row or ((total := sum(row)) != total and all(value != value for value in row)):
                return False
        return True
    host = host_view(rewards)
    if host is None or host.dtype.kind != "f":
        return False
    nan = np.isnan(host)
    # the ufunc reductions ndarray's any/all call, without their Python wrappers
    return not (np.logical_or.reduce(nan if nan.ndim == 1 else np.logical_and.reduce(nan, axis=1)))


# ------------------------------------------------------------------------------------------ advantages: NaN rows
@_register(
    "unscorable_rows",
    "advantages",
    "rows every reward function returned None/NaN for are left out of their group's statistics and get A = 0",
    "rewards_per_func + advantages + group_index",
)
def unscorable_check(step: TraceStep, spec: GRPOSpec, trace: Trace | None) -> Finding | None:
    check_id = "rederive.unscorable_rows"
    for name in ("rewards_per_func", "advantages", "group_index"):
        if tensor_or_none(step, name) is None:
            if name == "rewards_per_func" or step.meta.get("scope") == "generation":
                return _not_captured(check_id, step, name)
            return _not_applicable(
                check_id, step, "a micro-batch without whole groups (checked on generation steps)"
            )
    rewards, advantages = step["rewards_per_func"], step["advantages"]
    if _no_unscorable_row(rewards, advantages):
        return _not_applicable(check_id, step, "no unscorable row")
    if advantages.dim() == 2:
        advantages = advantages[:, 0]
    bad = unscorable(rewards)
    if bad.numel() != advantages.numel():
        return _finding(
            check_id, step, Verdict.INCONCLUSIVE, "rewards_per_func and advantages have different rows"
        )
    if not bool(bad.any()):
        return _not_applicable(check_id, step, "no unscorable row")
    advantages = advantages.detach().double()  # converted only where there is something to verify
    from grpo_check.reference.advantages import compute_advantages

    weights = step.get("reward_weights")
    expected = compute_advantages(rewards, step["group_index"], spec, reward_weights=weights).advantages
    expected = expected.to(advantages.dtype)
    groups = step["group_index"].reshape(-1)
    own = torch.where(bad, torch.nan_to_num(advantages.abs(), nan=float("inf")), 0.0)
    if bool((own > 0).any()):
        row = int(own.argmax())
        figure = float(own[row])
        return _finding(
            check_id,
            step,
            Verdict.FAIL,
            f"{int((own > 0).sum())} unscorable row(s) carry a non-zero advantage (row {row}: A = "
            f"{float(advantages[row]):.4g}, expected 0)",
            figure=figure,
            tolerance=0.0,
            row=row,
            catalog_id="8",
            likely_cause="an unscorable (None/NaN) reward is scored 0 and kept in its group",
            fix="mark rows whose every reward is NaN unscorable: rewards NaN, nanmean/nanstd per group, A = 0",
        )
    # scale-free per group (std conventions and ε scale a group's advantages, they do not turn them): the
    # direction of the scorable rows' advantages must be the one re-derived without the unscorable rows
    figure, row, tolerance = 0.0, None, 1e-3
    for group in torch.unique(groups[bad]).tolist():
        rows = ((groups == group) & ~bad).nonzero().reshape(-1)
        given, wanted = advantages[rows], expected[rows]
        scale_given, scale_wanted = float(given.norm()), float(wanted.norm())
        if scale_wanted < 1e-12 and scale_given < 1e-12:
            continue
        if scale_wanted < 1e-12 or scale_given < 1e-12 or not torch.isfinite(given).all():
            error = torch.full_like(given, float("inf"))
        else:
            error = (given / scale_given - wanted / scale_wanted).abs()
        worst = int(error.argmax())
        if float(error[worst]) > figure:
            figure, row = float(error[worst]), int(rows[worst])
    if row is None or figure <= tolerance:
        return _finding(
            check_id,
            step,
            Verdict.PASS,
            f"{int(bad.sum())} unscorable row(s): A = 0 and their groups' advantages point where statistics over "
            "the scorable rows alone put them",
            figure=figure,
            tolerance=tolerance,
        )
    return _finding(
        check_id,
        step,
        Verdict.FAIL,
        f"the scorable rows of a group with unscorable rows have advantages that differ in direction from those "
        f"re-derived without the unscorable rows by up to {figure:.3g} (unit-normalised per group, allowed "
        f"{tolerance:.3g}) at row {row}",
        figure=figure,
        tolerance=tolerance,
        row=row,
        catalog_id="8",
        likely_cause="an unscorable (None/NaN) reward enters its group's mean and std (collapsed to 0 by nansum)",
        fix="mark rows whose every reward is NaN unscorable: rewards NaN, nanmean/nanstd per group, A = 0",
    )
