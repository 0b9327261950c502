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
    if group_index.numel() <= PY_ROWS and group_index.device.type == "cpu":
        n_groups = _dense_labels(group_index.tolist())
        return None if n_groups is None else (group_index, n_groups)
    host = host_view(group_index)
    if host is None or host[0] != 0:
        return None
    steps = (host[1:] - host[:-1]).view(np.uint64)  # a decrease wraps to a huge unsigned step
    if not np.logical_and.reduce(steps <= 1):  # ndarray.all's ufunc reduction, without its wrapper
        return None
    return group_index, int(host[-1]) + 1


def _dense_labels(labels: list[int]) -> int | None:
    """The number of labels when ``labels`` is 0, 0, 1, 1, 2, ... (each the same as or one above the one before,
    from 0), else ``None``."""
    previous = 0
    for label in labels:
        if label != previous and label != previous + 1:
            return None
        previous = label
    return None if labels[0] != 0 else previous + 1


def group_mean_std(
    values: torch.Tensor, group_ids: torch.Tensor, n_groups: int, std: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """:func:`grpo_check.reference.advantages.group_mean_std` in numpy (``None`` when not applicable)."""
    if values.dtype is not torch.float64 or group_ids.dtype is not torch.int64:
        return None
    x, ids = host_view(values), host_view(group_ids)
    if x is None or ids is None or x.ndim != 1 or x.size == 0:  # np.bincount of nothing is int64: torch's
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
    if values.shape[0] <= PY_ROWS and epsilon > 0.0 and values.device.type == group_ids.device.type == "cpu":
        return _group_advantages_py(values, weights, group_ids, n_groups, std, scale_rewards, epsilon)
    x, ids = host_view(values), host_view(group_ids)
    if x is None or ids is None or x.shape[0] == 0:  # np.bincount of nothing is int64: torch's
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


# Up to this many rows, the group statistics and the advantages are computed in Python floats (the same
# IEEE double operations, in the same order): on a demo-sized batch a handful of list passes costs less
# than the numpy calls, whose per-call overhead dominates while their code is cold between checks.
PY_ROWS = 64

_INF = float("inf")
_NAN = float("nan")


def _group_advantages_py(
    values: torch.Tensor,
    weights: torch.Tensor | None,
    group_ids: torch.Tensor,
    n_groups: int,
    std: str,
    scale_rewards: str,
    epsilon: float,
) -> tuple[torch.Tensor, ...]:
    """:func:`group_advantages` in Python floats (``epsilon`` > 0: no denominator is zero, so no Python
    division raises where IEEE gives ±inf or NaN)."""
    # (A8) a row whose every value is NaN; a row whose sum is no NaN holds no NaN (a NaN term makes the sum NaN)
    unscorable = [
        False if row and (s := sum(row)) == s else all(v != v for v in row) for row in values.tolist()
    ]
    rewards = (values if weights is None else values * weights.unsqueeze(0)).nansum(dim=1)  # (R1)
    r = rewards.tolist()
    if any(unscorable):
        r = [_NAN if bad else v for v, bad in zip(r, unscorable, strict=True)]
        rewards = torch.tensor(r, dtype=torch.float64)  # the sum's masked_fill
    ids = group_ids.tolist()
    mean, scale, count = _group_stats_py(r, ids, n_groups, std)  # (A1) (A2)
    if scale_rewards == "batch":
        scale_rows = [_group_stats_py(r, [0] * len(r), 1, std)[1][0]] * len(r)  # (A5)
    else:
        scale_rows = [scale[g] for g in ids]
    mean_rows, count_rows = [mean[g] for g in ids], [count[g] for g in ids]
    advantages = []
    for v, m, sigma, n, bad in zip(r, mean_rows, scale_rows, count_rows, unscorable, strict=True):
        a = v - m  # (A3) numerator
        if scale_rewards != "none":
            a = a / (sigma + epsilon)  # (A3)
        if not n > 1.0 or bad or a != a:  # (A7) fewer than 2 scorable rows, (A8) unscorable rows and NaN
            a = 0.0
        elif a == _INF:  # (A8) nan_to_num's ±inf → ±max
            a = _FLOAT64_MAX
        elif a == -_INF:
            a = -_FLOAT64_MAX
        advantages.append(a)
    # one (4, B) array and its rows (contiguous views): one conversion of the lists instead of four (numpy's
    # conversion of Python floats and bools is exact and costs less than torch.tensor's)
    advantages_t, mean_t, scale_t, count_t = torch.from_numpy(
        np.array([advantages, mean_rows, scale_rows, count_rows], dtype=np.float64)
    ).unbind()
    scorable = torch.from_numpy(np.array([not bad for bad in unscorable], dtype=np.bool_))
    return rewards, advantages_t, mean_t, scale_t, scorable, count_t


def _group_stats_py(
    x: list[float], ids: list[int], n_groups: int, std: str
) -> tuple[list[float], list[float], list[float]]:
    """:func:`_group_stats` on Python floats: the same operations in the same order (a scatter-add adds row
    by row into 0.0; NaN rows add nothing, adding 0.0 to a sum that is never −0.0 changes nothing)."""
    count = [0.0] * n_groups
    shift = [_INF] * n_groups
    for v, g in zip(x, ids, strict=True):
        if v == v:
            count[g] += 1.0
            s = shift[g]
            shift[g] = s if s < v else v  # np.minimum's tie rule (either zero gives the same mean)
    shift = [0.0 if s == _INF or s == -_INF else s for s in shift]
    total = [0.0] * n_groups
    for v, g in zip(x, ids, strict=True):
        if v == v:
            total[g] += v - shift[g]
    # (A1); a group without a scorable row: 0/0 = NaN
    mean = [s + t / c if c != 0.0 else _NAN for s, t, c in zip(shift, total, count, strict=True)]
    ss = [0.0] * n_groups
    for v, g in zip(x, ids, strict=True):
        if v == v:
            d = v - mean[g]
            ss[g] += d * d
    dof = [c - 1.0 for c in count] if std == "sample" else count  # (A2)
    var = [q / max(k, 1.0) if k > 0.0 else _NAN for q, k in zip(ss, dof, strict=True)]
    # torch's sqrt, not math.sqrt: the two differ in the last bit of some values
    return mean, torch.from_numpy(np.array(var, dtype=np.float64)).sqrt().tolist(), count
