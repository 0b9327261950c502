"""Host (numpy) twins of the reference's group statistics, for small CPU tensors (internal).

A torch operation costs a few microseconds of dispatch whatever the tensor's size; numpy's float64
arithmetic (+ − × ÷), comparisons and sequential scatter-adds are the same IEEE operations at a fraction
of that. (Not the square root: torch's CPU sqrt differs from the correctly rounded np.sqrt in the last bit
of some values, so torch's is kept.) Each function here is operation for operation the torch code it stands in for (same operations, same
order of accumulation), so its values are bit-identical; it answers ``None`` where it does not apply and
the torch code runs.
"""

from __future__ import annotations

import numpy as np
import torch

from grpo_check._step_cache import host_view

_FLOAT64_MAX = float(np.finfo(np.float64).max)  # where torch.nan_to_num puts +inf (and −inf at its negative)


def dense_group_ids(group_index: torch.Tensor) -> tuple[torch.Tensor, int] | None:
    """``torch.unique(group_index, return_inverse=True)`` as ``(inverse, n_labels)`` when ``group_index`` is
    already dense and sorted (0, 0, 1, 1, 2, ...: contiguous groups, the usual layout): the inverse is then
    ``group_index`` itself. ``None`` otherwise (or for a tensor numpy does not view)."""
    if group_index.dtype is not torch.int64 or group_index.dim() != 1 or group_index.numel() == 0:
        return None
    host = host_view(group_index)
    if host is None or host[0] != 0:
        return None
    steps = (host[1:] - host[:-1]).view(np.uint64)  # a decrease wraps to a huge unsigned step
    if not np.logical_and.reduce(steps <= 1):  # ndarray.all's ufunc reduction, without its wrapper
        return None
    return group_index, int(host[-1]) + 1


def group_mean_std(
    values: torch.Tensor, group_ids: torch.Tensor, n_groups: int, std: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """:func:`grpo_check.reference.advantages.group_mean_std` in numpy (``None`` when not applicable)."""
    if values.dtype is not torch.float64 or group_ids.dtype is not torch.int64:
        return None
    x, ids = host_view(values), host_view(group_ids)
    if x is None or ids is None or x.ndim != 1:
        return None
    mean, scale, count = _group_stats(x, ids, n_groups, std)
    return torch.from_numpy(mean[ids]), torch.from_numpy(scale[ids]), torch.from_numpy(count[ids])


def _group_stats(
    x: np.ndarray, ids: np.ndarray, n_groups: int, std: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-group NaN-aware mean (A1), std (A2) and count of float64 ``x`` under dense ``ids``.

    ``index_add`` of a 1-D source and ``np.bincount`` with weights both add row by row, in row order, into
    zeros; ``scatter_reduce(amin)`` and ``np.minimum.at`` both keep the running value on a tie.
    """
    with np.errstate(all="ignore"):  # NaN for empty groups and ±inf rewards, as torch gives silently
        finite = ~np.isnan(x)
        # without a NaN (most steps) each select below keeps every value: skipped, the same numbers
        every = bool(np.logical_and.reduce(finite))
        count = np.bincount(ids, weights=finite.astype(np.float64), minlength=n_groups)
        shift = np.full(n_groups, np.inf)
        np.minimum.at(shift, ids, x if every else np.where(finite, x, np.inf))
        shift = np.where(np.isinf(shift), 0.0, shift)
        centred = x - shift[ids]
        total = np.bincount(
            ids, weights=centred if every else np.where(finite, centred, 0.0), minlength=n_groups
        )
        mean = shift + total / count  # (A1)
        dev2 = (x - mean[ids]) ** 2
        if not every:
            dev2 = np.where(finite, dev2, 0.0)
        ss = np.bincount(ids, weights=dev2, minlength=n_groups)
        dof = count - 1.0 if std == "sample" else count  # (A2)
        var = np.where(dof > 0.0, ss / np.maximum(dof, 1.0), np.nan)
    # torch's sqrt, not numpy's: the two differ in the last bit of some values (np.sqrt is correctly rounded)
    return mean, torch.from_numpy(var).sqrt().numpy(), count


def group_advantages(
    values: torch.Tensor,
    weights: torch.Tensor | None,
    group_ids: torch.Tensor,
    n_groups: int,
    std: str,
    scale_rewards: str,
    epsilon: float,
) -> tuple[torch.Tensor, ...] | None:
    """The sum-then-normalise, mean-baseline branch of
    :func:`grpo_check.reference.advantages.compute_advantages` from (B, F) float64 ``values`` on dense
    ``group_ids``: ``(rewards, advantages, group_mean, group_std, scorable, group_size)``, or ``None`` when
    not applicable. The weighted NaN-sum over the reward functions stays torch's (a sum); everything after
    it is element-wise, counted or the group statistics above."""
    if values.dtype is not torch.float64 or group_ids.dtype is not torch.int64 or values.dim() != 2:
        return None
    x, ids = host_view(values), host_view(group_ids)
    if x is None or ids is None:
        return None
    unscorable = np.isnan(x).all(axis=1)  # (A8)
    rewards = (values if weights is None else values * weights.unsqueeze(0)).nansum(dim=1)  # (R1)
    r = host_view(rewards)
    if r is None:  # pragma: no cover - a reduction of a small CPU tensor is one
        return None
    r[unscorable] = np.nan  # the fresh sum's masked_fill, in place
    mean, scale, count = _group_stats(r, ids, n_groups, std)  # (A1) (A2)
    if scale_rewards == "batch":
        scale = _group_stats(r, np.zeros_like(ids), 1, std)[1][np.zeros_like(ids)]  # (A5)
    else:
        scale = scale[ids]
    mean, count = mean[ids], count[ids]
    with np.errstate(all="ignore"):  # NaN and ±inf as torch gives them silently
        advantages = r - mean  # (A3) numerator
        if scale_rewards != "none":
            advantages = advantages / (scale + epsilon)  # (A3)
    # (A7) fewer than 2 scorable rows, (A8) unscorable rows and NaN: 0; then nan_to_num's ±inf → ±max
    advantages = np.where((count > 1.0) & ~unscorable & (advantages == advantages), advantages, 0.0)
    advantages = np.minimum(np.maximum(advantages, -_FLOAT64_MAX), _FLOAT64_MAX)  # (A8)
    return (
        rewards,
        torch.from_numpy(advantages),
        torch.from_numpy(mean),
        torch.from_numpy(scale),
        torch.from_numpy(~unscorable),
        torch.from_numpy(count),
    )
