"""Stage `rewards` → `advantages`: group-relative advantages (spec §2, equations R1, A1–A8).

Group membership comes from ``group_index`` (rows with the same value answered the same prompt); rows
need not be contiguous. NaN rewards are "unscorable": they are left out of every statistic and get
advantage 0 (A8). A group with a single scorable row (G = 1 included) gets advantage 0.

Example::

    >>> import torch
    >>> from grpo_check.config import GRPOSpec
    >>> from grpo_check.reference import compute_advantages
    >>> out = compute_advantages(torch.tensor([[1.0], [0.0], [0.0], [1.0]]), torch.tensor([0, 0, 1, 1]),
    ...                          GRPOSpec(num_generations=2))
    >>> [round(a, 4) for a in out.advantages.tolist()]
    [0.707, -0.707, -0.707, 0.707]
"""

from __future__ import annotations

import dataclasses

import torch

from grpo_check.config import GRPOSpec
from grpo_check.findings import InputError
from grpo_check.reference import _host
from grpo_check.reference._util import DTYPE, as_f64


@dataclasses.dataclass(frozen=True)
class AdvantageOutput:
    """Everything the advantage stage produces, one value per row (B,).

    ``rewards`` is the weighted total reward (R1), NaN for unscorable rows. ``centered`` is the quantity the
    baseline is subtracted from (= ``rewards`` for sum-then-normalise; the summed per-function z-scores for
    normalise-then-sum). ``group_mean`` is the baseline b_i actually subtracted (the leave-one-out mean under
    ``baseline="rloo"``), ``group_std`` the scale σ_i (NaN where undefined, e.g. a one-row group with sample
    std; 1.0 is never substituted), ``scorable`` is False for rows whose every reward function returned NaN.
    """

    rewards: torch.Tensor
    advantages: torch.Tensor
    group_mean: torch.Tensor
    group_std: torch.Tensor
    scorable: torch.Tensor
    centered: torch.Tensor
    group_size: torch.Tensor  # number of scorable rows in the row's group (or batch, for batch statistics)


def dense_group_ids(group_index: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Map arbitrary group labels to 0..n_groups-1 (row order is irrelevant)."""
    if group_index.dim() != 1:
        raise InputError(
            f"group_index must be 1-D (B,), got shape {tuple(group_index.shape)}", field="group_index"
        )
    dense = _host.dense_group_ids(group_index)  # already 0..n-1 in order (contiguous groups): itself
    if dense is not None:
        return dense
    labels, inverse = torch.unique(group_index, return_inverse=True)
    return inverse, int(labels.numel())


def total_rewards(rewards_per_func: torch.Tensor, reward_weights: torch.Tensor | None = None) -> torch.Tensor:
    """r_i = Σ_k w_k R_ik over the non-NaN reward functions; NaN when every function returned NaN.  # (R1)"""
    rewards_per_func = _as_2d(rewards_per_func)
    weights = _weights(reward_weights, rewards_per_func.shape[1])
    return _weighted_total(rewards_per_func, weights, torch.isnan(rewards_per_func).all(dim=1))


def _weighted_total(
    values: torch.Tensor, weights: torch.Tensor | None, unscorable: torch.Tensor
) -> torch.Tensor:
    """:func:`total_rewards` of (B, F) float64 ``values``, given their (F,) weights (``None``: unit weights,
    for which w·R is R exactly) and unscorable rows."""
    total = _weighted(values, weights).nansum(dim=1)  # (R1)
    return total.masked_fill(unscorable, float("nan"))


def group_mean_std(
    values: torch.Tensor, group_ids: torch.Tensor, n_groups: int, std: str = "sample"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row NaN-aware group mean (A1), std (A2) and scorable count of the row's group.

    Sample std is NaN for groups with fewer than 2 finite values; population std is 0 for one value.
    """
    host = _host.group_mean_std(values, group_ids, n_groups, std)  # a small CPU batch: the same in numpy
    if host is not None:
        return host
    finite = ~torch.isnan(values)
    zeros = torch.zeros(n_groups, dtype=DTYPE, device=values.device)
    count = zeros.index_add(0, group_ids, finite.to(DTYPE))
    # Shifted mean: m = c + Σ(r − c)/n with c the group minimum, so an all-equal group has mean == its value
    # exactly and advantage exactly 0 (a plain Σr/n leaves a ~1e-16 residue that σ+ε can blow up).
    shift = torch.full((n_groups,), float("inf"), dtype=DTYPE, device=values.device)
    shift = shift.scatter_reduce(0, group_ids, torch.where(finite, values, float("inf")), reduce="amin")
    shift = torch.where(torch.isinf(shift), 0.0, shift)
    total = zeros.index_add(0, group_ids, torch.where(finite, values - shift[group_ids], 0.0))
    mean = shift + total / count  # (A1)  NaN for a group with no finite value
    dev2 = torch.where(finite, (values - mean[group_ids]) ** 2, 0.0)
    ss = zeros.index_add(0, group_ids, dev2)
    dof = count - 1.0 if std == "sample" else count  # (A2)
    var = torch.where(dof > 0.0, ss / dof.clamp(min=1.0), float("nan"))
    return mean[group_ids], var.sqrt()[group_ids], count[group_ids]


def leave_one_out_mean(values: torch.Tensor, group_ids: torch.Tensor, n_groups: int) -> torch.Tensor:
    """b_i = (Σ_{j∈g(i), j≠i} r_j) / (n_g − 1) over scorable rows; NaN when n_g ≤ 1.  # (A4)"""
    finite = ~torch.isnan(values)
    zeros = torch.zeros(n_groups, dtype=DTYPE, device=values.device)
    count = zeros.index_add(0, group_ids, finite.to(DTYPE))[group_ids]
    total = zeros.index_add(0, group_ids, torch.where(finite, values, 0.0))[group_ids]
    others = torch.where(finite, count - 1.0, count)  # an unscorable row's "others" are all scorable rows
    loo = (total - torch.where(finite, values, 0.0)) / others  # (A4)
    return torch.where(others > 0, loo, torch.full_like(loo, float("nan")))


def scale_advantages(centered: torch.Tensor, scale: torch.Tensor, epsilon: float) -> torch.Tensor:
    """A_i = (r_i − b_i) / (σ_i + ε).  # (A3)"""
    return centered / (scale + epsilon)  # (A3)


def compute_advantages(
    rewards_per_func: torch.Tensor,
    group_index: torch.Tensor | None,
    spec: GRPOSpec,
    reward_weights: torch.Tensor | None = None,
) -> AdvantageOutput:
    """Group-relative advantages from per-function rewards (B, F) or total rewards (B,).

    ``group_index`` (B,) says which prompt each row answered; ``None`` means contiguous blocks of
    ``spec.num_generations``. ``reward_weights`` overrides ``spec.reward_weights``.
    Implements (R1), (A1)–(A8) of ``reference/grpo-algorithm.md``; TRL semantics by default.
    """
    values = _as_2d(rewards_per_func)
    n_rows = values.shape[0]
    if group_index is None:
        if n_rows % spec.num_generations:
            raise InputError(
                f"{n_rows} rows is not a multiple of num_generations={spec.num_generations} and no group_index "
                "was given",
                field="group_index",
            )
        group_index = torch.arange(n_rows, device=values.device) // spec.num_generations
    if group_index.shape[0] != n_rows:
        raise InputError(
            f"group_index has {group_index.shape[0]} rows but rewards have {n_rows}", field="group_index"
        )
    group_ids, n_groups = dense_group_ids(group_index.to(values.device))
    weights = reward_weights if reward_weights is not None else spec.reward_weights
    weights_t = None if weights is None else _weights(weights, values.shape[1]).to(values.device)
    if spec.multi_objective_aggregation == "sum_then_normalize" and spec.baseline != "rloo":
        host = _host.group_advantages(
            values, weights_t, group_ids, n_groups, spec.std, spec.scale_rewards, spec.adv_epsilon
        )  # a small CPU batch: the same in numpy
        if host is not None:
            rewards, advantages, mean, scale, scorable, group_count = host
            return AdvantageOutput(
                rewards=rewards,
                advantages=advantages,
                group_mean=mean,
                group_std=scale,
                scorable=scorable,
                centered=rewards,
                group_size=group_count,
            )
    unscorable = torch.isnan(values).all(dim=1)
    scorable = ~unscorable
    rewards = _weighted_total(values, weights_t, unscorable)  # (R1)

    if spec.multi_objective_aggregation == "normalize_then_sum":
        # (A6) z-score each reward function within its group, sum with weights, then normalise over the batch.
        zscores = torch.empty_like(values)
        for k in range(values.shape[1]):
            mean_k, std_k, _ = group_mean_std(values[:, k], group_ids, n_groups, spec.std)
            zscores[:, k] = scale_advantages(values[:, k] - mean_k, std_k, spec.adv_epsilon)
        centered = _weighted(zscores, weights_t).nansum(dim=1)
        centered = centered.masked_fill(~scorable, float("nan"))
        all_rows = torch.zeros(n_rows, dtype=torch.long, device=values.device)
        mean, scale, _ = group_mean_std(centered, all_rows, 1, spec.std)  # (A5)
        advantages = scale_advantages(centered - mean, scale, spec.adv_epsilon)  # (A3)
        group_count = group_mean_std(rewards, group_ids, n_groups, spec.std)[2]
    else:
        centered = rewards
        mean, group_std, group_count = group_mean_std(rewards, group_ids, n_groups, spec.std)  # (A1) (A2)
        if spec.baseline == "rloo":
            mean = leave_one_out_mean(rewards, group_ids, n_groups)  # (A4)
        if spec.scale_rewards == "batch":
            all_rows = torch.zeros(n_rows, dtype=torch.long, device=values.device)
            _, scale, _ = group_mean_std(rewards, all_rows, 1, spec.std)  # (A5)
        else:
            scale = group_std
        advantages = rewards - mean  # (A3) numerator
        if spec.scale_rewards != "none":
            advantages = scale_advantages(advantages, scale, spec.adv_epsilon)  # (A3)
    if spec.multi_objective_aggregation == "sum_then_normalize":
        # (A7) a group with < 2 scorable rows carries no relative signal (G = 1 included): advantage 0.
        advantages = torch.where(group_count > 1.0, advantages, 0.0)
    advantages = torch.where(scorable, advantages, 0.0)  # (A8)
    advantages = torch.nan_to_num(advantages, nan=0.0)  # (A8)
    return AdvantageOutput(
        rewards=rewards,
        advantages=advantages,
        group_mean=mean,
        group_std=scale,
        scorable=scorable,
        centered=centered,
        group_size=group_count,
    )


def _as_2d(rewards_per_func: torch.Tensor) -> torch.Tensor:
    if isinstance(rewards_per_func, torch.Tensor):
        rewards_per_func = as_f64(rewards_per_func)
    else:  # a list: the default dtype first, as before
        rewards_per_func = torch.as_tensor(rewards_per_func).to(DTYPE)
    if rewards_per_func.dim() == 1:
        return rewards_per_func.unsqueeze(1)
    if rewards_per_func.dim() != 2:
        raise InputError(
            f"rewards_per_func must be (B, F) or (B,), got shape {tuple(rewards_per_func.shape)}",
            field="rewards_per_func",
        )
    return rewards_per_func


def _weighted(values: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """w_k · values[:, k] for (B, F) values; unit weights (``None``) leave every value as it is."""
    return values if weights is None else values * weights.unsqueeze(0)


def _weights(weights: torch.Tensor | tuple | list | None, n_funcs: int) -> torch.Tensor:
    if weights is None:
        return torch.ones(n_funcs, dtype=DTYPE)
    weights_t = torch.as_tensor(weights, dtype=DTYPE)
    if weights_t.numel() != n_funcs:
        raise InputError(
            f"{weights_t.numel()} reward weights for {n_funcs} reward functions", field="reward_weights"
        )
    return weights_t.reshape(n_funcs)
