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
    if not (steps <= 1).all():
        return None
    return group_index, int(host[-1]) + 1


def group_mean_std(
    values: torch.Tensor, group_ids: torch.Tensor, n_groups: int, std: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """:func:`grpo_check.reference.advantages.group_mean_std` in numpy (``None`` when not applicable).

    ``index_add`` of a 1-D source and ``np.bincount`` with weights both add row by row, in row order, into
    zeros; ``scatter_reduce(amin)`` and ``np.minimum.at`` both keep the running value on a tie.
    """
    if values.dtype is not torch.float64 or group_ids.dtype is not torch.int64:
        return None
    x, ids = host_view(values), host_view(group_ids)
    if x is None or ids is None or x.ndim != 1:
        return None
    with np.errstate(all="ignore"):  # NaN for empty groups and ±inf rewards, as torch gives silently
        finite = ~np.isnan(x)
        count = np.bincount(ids, weights=finite.astype(np.float64), minlength=n_groups)
        shift = np.full(n_groups, np.inf)
        np.minimum.at(shift, ids, np.where(finite, x, np.inf))
        shift = np.where(np.isinf(shift), 0.0, shift)
        total = np.bincount(ids, weights=np.where(finite, x - shift[ids], 0.0), minlength=n_groups)
        mean = shift + total / count  # (A1)
        dev2 = np.where(finite, (x - mean[ids]) ** 2, 0.0)
        ss = np.bincount(ids, weights=dev2, minlength=n_groups)
        dof = count - 1.0 if std == "sample" else count  # (A2)
        var = np.where(dof > 0.0, ss / np.maximum(dof, 1.0), np.nan)
    # torch's sqrt, not numpy's: the two differ in the last bit of some values (np.sqrt is correctly rounded)
    scale = torch.from_numpy(var).sqrt().numpy()
    return torch.from_numpy(mean[ids]), torch.from_numpy(scale[ids]), torch.from_numpy(count[ids])
