"""Advantage stage: invariants (A1–A8) as hypothesis properties, plus edge cases."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from grpo_check.config import GRPOSpec
from grpo_check.findings import InputError
from grpo_check.reference import compute_advantages

FAST = settings(max_examples=25, deadline=None)


@st.composite
def grouped_rewards(draw, max_groups=4, max_g=6):
    n_groups = draw(st.integers(1, max_groups))
    g = draw(st.integers(2, max_g))
    values = draw(
        st.lists(st.floats(-5, 5, allow_nan=False, width=32), min_size=n_groups * g, max_size=n_groups * g)
    )
    group_index = [i // g for i in range(n_groups * g)]
    perm = draw(st.permutations(range(n_groups * g)))
    rewards = torch.tensor(values, dtype=torch.float64)[list(perm)]
    return rewards, torch.tensor(group_index)[list(perm)], g


@FAST
@given(grouped_rewards(), st.sampled_from(["mean", "rloo"]), st.sampled_from(["group", "none"]))
def test_group_sums_are_zero(data, baseline, scale):
    rewards, group_index, g = data
    spec = GRPOSpec(num_generations=g, baseline=baseline, scale_rewards=scale)
    adv = compute_advantages(rewards, group_index, spec).advantages
    for label in group_index.unique():
        total = adv[group_index == label].sum().item()
        assert abs(total) <= 1e-9 * max(1.0, adv.abs().max().item())


@FAST
@given(grouped_rewards(), st.sampled_from(["sample", "population"]))
def test_advantage_bounds(data, std):
    rewards, group_index, g = data
    adv = compute_advantages(rewards, group_index, GRPOSpec(num_generations=g, std=std)).advantages
    bound = (g - 1) / math.sqrt(g) if std == "sample" else math.sqrt(g - 1)
    assert adv.abs().max().item() <= bound + 1e-9


@FAST
@given(st.floats(-100, 100, allow_nan=False), st.integers(1, 8))
def test_all_equal_group_gives_exactly_zero(value, g):
    rewards = torch.full((g,), value, dtype=torch.float64)
    adv = compute_advantages(
        rewards, torch.zeros(g, dtype=torch.long), GRPOSpec(num_generations=g)
    ).advantages
    assert torch.equal(adv, torch.zeros(g, dtype=torch.float64))


def test_g1_gives_zero_advantage():
    out = compute_advantages(torch.tensor([3.0, -1.0]), torch.tensor([0, 1]), GRPOSpec(num_generations=1))
    assert torch.equal(out.advantages, torch.zeros(2, dtype=torch.float64))


def test_nan_rewards_are_excluded_and_get_zero():
    rewards = torch.tensor([1.0, float("nan"), 0.0, 0.0])
    out = compute_advantages(rewards, torch.zeros(4, dtype=torch.long), GRPOSpec(num_generations=4))
    assert out.advantages[1].item() == 0.0
    assert out.scorable.tolist() == [True, False, True, True]
    clean = compute_advantages(
        torch.tensor([1.0, 0.0, 0.0]), torch.zeros(3, dtype=torch.long), GRPOSpec(num_generations=3)
    )
    torch.testing.assert_close(out.advantages[[0, 2, 3]], clean.advantages)
    assert torch.isfinite(out.advantages).all()


def test_group_membership_comes_from_group_index_not_position():
    """Firing/silent: the same rows shuffled give the same per-row advantages; contiguous blocks would not."""
    rewards = torch.tensor([1.0, 5.0, 0.0, 6.0])
    interleaved = compute_advantages(
        rewards, torch.tensor([0, 1, 0, 1]), GRPOSpec(num_generations=2)
    ).advantages
    contiguous = compute_advantages(rewards, None, GRPOSpec(num_generations=2)).advantages
    assert interleaved.tolist() == pytest.approx([0.7071, -0.7071, -0.7071, 0.7071], abs=1e-3)
    assert not torch.allclose(interleaved, contiguous)


def test_batch_scaling_uses_batch_std():
    rewards = torch.tensor([0.0, 1.0, 10.0, 12.0], dtype=torch.float64)
    out = compute_advantages(
        rewards, torch.tensor([0, 0, 1, 1]), GRPOSpec(num_generations=2, scale_rewards="batch")
    )
    batch_std = rewards.std().item()
    assert out.advantages.tolist() == pytest.approx(
        [-0.5 / (batch_std + 1e-4), 0.5 / (batch_std + 1e-4), -1 / (batch_std + 1e-4), 1 / (batch_std + 1e-4)]
    )


def test_epsilon_size_changes_advantages_by_sigma_over_sigma_plus_eps():
    rewards, groups = torch.tensor([1.0, 0.0, 0.0, 1.0]), torch.zeros(4, dtype=torch.long)
    small = compute_advantages(rewards, groups, GRPOSpec(num_generations=4)).advantages
    large = compute_advantages(rewards, groups, GRPOSpec(num_generations=4, adv_epsilon=1e4)).advantages
    sigma = rewards.std().item()
    torch.testing.assert_close(
        large / small, torch.full((4,), (sigma + 1e-4) / (sigma + 1e4), dtype=torch.float64)
    )


def test_reward_weights_and_shape_errors():
    rewards = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    out = compute_advantages(
        rewards, torch.tensor([0, 0]), GRPOSpec(num_generations=2), reward_weights=torch.tensor([1.0, 0.5])
    )
    assert out.rewards.tolist() == [2.0, 0.0]
    with pytest.raises(InputError):
        compute_advantages(
            rewards, torch.tensor([0, 0]), GRPOSpec(num_generations=2), reward_weights=torch.tensor([1.0])
        )
    with pytest.raises(InputError):
        compute_advantages(torch.zeros(3), None, GRPOSpec(num_generations=2))
