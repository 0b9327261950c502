"""NaN/Inf signatures: NaN rewards leaking into group statistics (#8), and where a NaN first appears.

The reference leaves unscorable (NaN) rewards out of every statistic and gives those rows advantage 0.
A trainer that lets them in either spreads NaN over the whole group, or (``nan_to_num`` before the
statistics) treats them as reward 0 and shifts every advantage of the group.
"""

from __future__ import annotations

import numpy as np
import torch

from grpo_check._step_cache import finite_mask, host_view
from grpo_check.diagnose._context import Diagnosis, close
from grpo_check.findings import Finding

# stage order of the tensors we trace a NaN through
_FLOW = (
    ("rewards", "rewards"),
    ("advantages", "advantages"),
    ("logps", "logps"),
    ("old_logps", "logps"),
    ("ref_logps", "logps"),
    ("ratio", "ratio"),
    ("kl", "kl"),
    ("per_token_loss", "loss"),
    ("loss", "loss"),
    ("logps_grad", "grad"),
)


def _first_nonfinite(t: torch.Tensor, mask: torch.Tensor | None) -> tuple[int | None, int | None] | None:
    bad = ~torch.isfinite(t)
    if mask is not None and bad.dim() == 2 and mask.shape == bad.shape:
        bad = bad & mask
    if not bool(bad.any()):
        return None
    flat = int(torch.nonzero(bad.reshape(-1))[0])
    if bad.dim() == 0:
        return None, None
    if bad.dim() == 1:
        return flat, None
    return flat // bad.shape[-1], flat % bad.shape[-1]


_PY_ELEMENTS = 256  # up to this many elements, Python sums first (tolist: no view)


def _all_clean(per_func: torch.Tensor, advantages: torch.Tensor) -> bool:
    """No NaN reward and every advantage finite (what most steps show): on a small step first from two Python
    sums (a NaN makes a sum NaN, a NaN or ±inf makes it non-finite: a clean sum proves a clean tensor; an
    unclean one, e.g. an overflow, is decided element by element below), then in numpy."""
    dims = per_func.dim()
    if (
        per_func.is_cpu
        and advantages.is_cpu
        and 1 <= dims <= 2
        and advantages.dim() == 1
        and per_func.numel() <= _PY_ELEMENTS
        and advantages.numel() <= _PY_ELEMENTS
    ):
        rows = per_func.tolist()
        total = sum(map(sum, rows)) if dims == 2 else sum(rows)
        advantage_total = sum(advantages.tolist())
        if total == total and advantage_total - advantage_total == 0.0:
            return True
    host, host_advantages = host_view(per_func), host_view(advantages)
    if host is not None and host_advantages is not None:
        # the ufunc reductions ndarray.any/all call, without their Python wrappers
        return not np.logical_or.reduce(np.isnan(host), axis=None) and bool(
            np.logical_and.reduce(np.isfinite(host_advantages), axis=None)
        )
    return not bool(torch.isnan(per_func).any()) and bool(finite_mask(advantages).all())


def detect_nan_leak(dx: Diagnosis) -> list[Finding]:
    """NaN rewards counted in the group statistics (as NaN or as 0): bug-catalog #8."""
    recorded_rewards, recorded_adv = dx.recorded("rewards_per_func"), dx.recorded("advantages")
    if recorded_rewards is None or recorded_adv is None:
        return []
    # in their own dtype: NaN and ±inf are where they are in the float64 copies
    if _all_clean(recorded_rewards, recorded_adv[:, 0] if recorded_adv.dim() == 2 else recorded_adv):
        return []
    per_func, trainer_adv = dx.trainer("rewards_per_func"), dx.trainer("advantages")
    per_func = per_func if per_func.dim() == 2 else per_func.unsqueeze(1)
    adv = trainer_adv[:, 0] if trainer_adv.dim() == 2 else trainer_adv
    nan_rows = torch.isnan(per_func).any(dim=1)
    adv_bad = ~finite_mask(adv)  # the step's shared mask
    failing = dx.failing(prefix="advantages.") + dx.failing(prefix="rewards.unscorable")
    if bool(adv_bad.any()):
        row = int(torch.nonzero(adv_bad)[0])
        how = "as NaN: every advantage of the group becomes NaN"
    else:
        from grpo_check.stepref.inputs import reference_advantages
        from grpo_check.trace.model import TraceStep

        if not dx.failing(prefix="advantages."):
            return []
        zeroed = TraceStep(
            tensors={**dx.step.tensors, "rewards_per_func": torch.nan_to_num(per_func, nan=0.0)},
            meta=dx.step.meta,
        )
        zeroed.tensors.pop("rewards", None)
        alt = reference_advantages(zeroed, dx.spec)
        if alt is None or not close(adv, alt.advantages, rtol=2e-3, atol=1e-4):
            return []
        row = int(torch.nonzero(nan_rows)[0])
        how = "as reward 0: the other advantages of the group are shifted"
    where = dx.where(row=row)
    return [
        dx.finding(
            check_id="diagnose.nan_reward_leak",
            stage="advantages",
            catalog_id="8",
            figure=float(nan_rows.sum()),
            tolerance=0.0,
            where=where,
            explanation=(
                f"{int(nan_rows.sum())} row(s) have a NaN reward (first: {where.describe()}) and the trainer counted "
                f"them in the group statistics {how}"
            ),
            likely_cause="NaN/None rewards leak into the group mean/std",
            fix=(
                "exclude unscorable rows from the group statistics (nanmean/nanstd over scorable rows) and give them "
                "advantage 0"
            ),
            attach_to=failing,
        )
    ]


def detect_nan_origin(dx: Diagnosis) -> list[Finding]:
    """Where a non-finite value first enters the trainer's tensors, when a comparison failed on NaN/Inf."""
    failing = [
        f for f in dx.failing() if f.details.get("nonfinite_side") == "trainer" and f.likely_cause is None
    ]
    if not failing:
        return []
    mask = dx.mask
    for name, stage in _FLOW:
        t = dx.trainer(name)
        if t is None:
            continue
        hit = _first_nonfinite(t, mask)
        if hit is None:
            continue
        row, token = hit
        if name in ("rewards",):
            continue  # a NaN reward is legitimate (unscorable); what matters is whether it leaks
        where = dx.where(row=row, token=token)
        catalog = "8" if stage in ("rewards", "advantages") else None
        return [
            dx.finding(
                check_id="diagnose.nan_origin",
                stage=stage,
                catalog_id=catalog,
                figure=float((~torch.isfinite(t)).sum()),
                tolerance=0.0,
                where=where,
                explanation=(
                    f"the first non-finite trainer value in pipeline order is in {name} (stage {stage}) at "
                    f"{where.describe()}; every later stage inherits it"
                ),
                likely_cause=(
                    "NaN/None rewards leak into the group statistics"
                    if catalog
                    else f"a NaN/Inf is produced in stage {stage} (overflow, log(0), or 0/0)"
                ),
                fix=(
                    "exclude unscorable rows from group statistics and give them advantage 0"
                    if catalog
                    else f"inspect how {name} is computed at that token; guard the division/exp/log that overflows"
                ),
                attach_to=failing,
            )
        ]
    return []
