"""Advantage invariants: each fires on a deliberately broken input and is silent on the correct one."""

from __future__ import annotations

import math

import pytest
import torch
from invariants_builders import group_advantages, only

from grpo_check.config import GRPOSpec
from grpo_check.findings import Verdict
from grpo_check.invariants import run_invariants
from grpo_check.trace.model import TraceStep

G = 4
PROMPTS = 3
SPEC = GRPOSpec(num_generations=G)


def run(step, spec, check_id):
    return only(run_invariants(step, spec, checks=[check_id]), check_id)


def varied_rewards(seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(PROMPTS * G, generator=generator).round(decimals=2)


def step_of(
    rewards: torch.Tensor, advantages: torch.Tensor, group_index: torch.Tensor | None = None
) -> TraceStep:
    if group_index is None:
        group_index = torch.arange(PROMPTS).repeat_interleave(G)
    return TraceStep(
        tensors={"rewards": rewards, "advantages": advantages, "group_index": group_index}, meta={"step": 1}
    )


def test_correct_advantages_pass_every_advantage_check():
    rewards = varied_rewards()
    rewards[:G] = 1.0  # an all-equal group
    findings = run_invariants(step_of(rewards, group_advantages(rewards, G)), SPEC, checks=["advantages."])
    assert {f.verdict for f in findings} == {Verdict.PASS}


def test_group_sum_zero_fires_on_repeat_instead_of_repeat_interleave():
    rewards = varied_rewards(1)
    true_groups = torch.arange(PROMPTS).repeat(G)  # rows cycle through the prompts: 0,1,2,0,1,2,...
    buggy = group_advantages(rewards, G)  # view(-1, G) assumes prompt-major rows
    finding = run(step_of(rewards, buggy, true_groups), SPEC, "advantages.group_sum_zero")
    assert finding.verdict is Verdict.FAIL and finding.catalog_id == "6"
    assert finding.figure > finding.tolerance
    # the same maths with per-group reduction on the true grouping passes
    grouped = torch.empty_like(rewards)
    order = torch.argsort(true_groups, stable=True)
    grouped[order] = group_advantages(rewards[order], G)
    assert (
        run(step_of(rewards, grouped, true_groups), SPEC, "advantages.group_sum_zero").verdict is Verdict.PASS
    )


def test_group_sum_zero_points_at_the_broken_group():
    rewards = varied_rewards(2)
    advantages = group_advantages(rewards, G)
    advantages[G + 2] += 0.3  # prompt 1, generation 2
    finding = run(step_of(rewards, advantages), SPEC, "advantages.group_sum_zero")
    assert finding.verdict is Verdict.FAIL
    assert finding.where.prompt == 1 and finding.where.step == 1
    assert finding.figure == pytest.approx(0.3, rel=1e-4)


def test_bounded_fires_on_residue_std():
    """NeMo-RL: a float residue std of 1.6e-4 divides real deviations: advantages ×4000."""
    rewards = varied_rewards(3)
    grouped = rewards.view(-1, G)
    buggy = ((grouped - grouped.mean(1, keepdim=True)) / 1.6e-4).view(-1)
    finding = run(step_of(rewards, buggy), SPEC, "advantages.bounded")
    assert finding.verdict is Verdict.FAIL and finding.catalog_id == "9"
    assert finding.figure > 1000 * (G - 1) / math.sqrt(G)
    assert (
        run(step_of(rewards, group_advantages(rewards, G)), SPEC, "advantages.bounded").verdict
        is Verdict.PASS
    )


def test_bounded_reports_population_std_as_a_convention():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0] * PROMPTS)  # the extreme case: |A| hits the bound
    grouped = rewards.view(-1, G)
    population = (
        (grouped - grouped.mean(1, keepdim=True)) / grouped.std(1, correction=0, keepdim=True)
    ).view(-1)
    finding = run(step_of(rewards, population), SPEC, "advantages.bounded")
    assert finding.verdict is Verdict.CONVENTION and finding.catalog_id == "10"
    assert (
        run(step_of(rewards, population), SPEC.replace(std="population"), "advantages.bounded").verdict
        is Verdict.PASS
    )


def test_epsilon_negligible_fires_on_huge_epsilon():
    """Seed S2: epsilon 1e4 instead of 1e-4 makes every advantage ≈ 0 while rewards vary."""
    rewards = varied_rewards(4)
    finding = run(
        step_of(rewards, group_advantages(rewards, G, epsilon=1e4)), SPEC, "advantages.epsilon_negligible"
    )
    assert finding.verdict is Verdict.FAIL and finding.catalog_id == "S2"
    assert finding.details["effective_epsilon"] == pytest.approx(1e4, rel=1e-3)
    correct = run(step_of(rewards, group_advantages(rewards, G)), SPEC, "advantages.epsilon_negligible")
    assert correct.verdict is Verdict.PASS and correct.figure > 0.99


def test_epsilon_negligible_fires_on_flipped_advantages():
    rewards = varied_rewards(5)
    finding = run(step_of(rewards, -group_advantages(rewards, G)), SPEC, "advantages.epsilon_negligible")
    assert finding.verdict is Verdict.FAIL and "anti-correlate" in finding.explanation


def test_constant_group_zero_fires_on_residue_amplified_by_tiny_epsilon():
    rewards = torch.full((G,), 0.7)  # mean(0.7 × 4) is not exactly 0.7 in float32 for some G; use 8 rows
    rewards = torch.full((8,), 0.7)
    group_index = torch.zeros(8, dtype=torch.long)
    spec = GRPOSpec(num_generations=8)
    residue = rewards - rewards.mean()
    assert residue.abs().max() > 0  # the float residue this test is about
    buggy = residue / (rewards.std() + 1e-8)
    finding = run(step_of(rewards, buggy, group_index), spec, "advantages.constant_group_zero")
    assert finding.verdict is Verdict.FAIL and finding.catalog_id == "9"
    trl_like = residue / (rewards.std() + 1e-4)  # TRL's own formula on the same residue: tiny, accepted
    assert (
        run(step_of(rewards, trl_like, group_index), spec, "advantages.constant_group_zero").verdict
        is Verdict.PASS
    )


def test_unscorable_rows_correct_handling_passes():
    per_func = torch.tensor([[1.0], [0.0], [float("nan")], [0.5]] * PROMPTS)
    total = per_func.nansum(1)
    total[torch.isnan(per_func).all(1)] = float("nan")
    advantages = group_advantages(total, G)  # NaN excluded from mean/std, then nan_to_num -> 0
    step = TraceStep(
        tensors={
            "rewards_per_func": per_func,
            "advantages": advantages,
            "group_index": torch.arange(PROMPTS).repeat_interleave(G),
        }
    )
    findings = run_invariants(step, SPEC, checks=["advantages."])
    assert {f.verdict for f in findings} == {Verdict.PASS}


def test_unscorable_row_collapsed_to_zero_reward_fires():
    per_func = torch.tensor([[1.0], [0.0], [float("nan")], [0.5]] * PROMPTS)
    index = torch.arange(PROMPTS).repeat_interleave(G)
    nansum = per_func.nansum(1)  # the NaN row becomes reward 0 and enters the statistics
    advantages = group_advantages(nansum, G)
    step = TraceStep(tensors={"rewards_per_func": per_func, "advantages": advantages, "group_index": index})
    finding = run(step, SPEC, "advantages.unscorable_zero")
    assert finding.verdict is Verdict.FAIL and finding.where.generation == 2 and finding.catalog_id == "8"
    # zeroing its advantage afterwards still leaks: the other rows' baseline included the fake 0
    zeroed = torch.where(torch.isnan(per_func).all(1), 0.0, advantages)
    leaked = run(
        TraceStep(tensors={**step.tensors, "advantages": zeroed}), SPEC, "advantages.unscorable_zero"
    )
    assert leaked.verdict is Verdict.FAIL and "leaked" in leaked.explanation


def test_unscorable_nan_propagating_into_group_fires():
    per_func = torch.tensor([[1.0], [0.0], [float("nan")], [0.5]] * PROMPTS)
    total = per_func.sum(1)  # NaN propagates through mean/std to the whole group
    grouped = total.view(-1, G)
    advantages = ((grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-4)).view(-1)
    advantages[2] = 0.0
    step = TraceStep(
        tensors={
            "rewards_per_func": per_func,
            "advantages": advantages,
            "group_index": torch.arange(PROMPTS).repeat_interleave(G),
        }
    )
    assert run(step, SPEC, "advantages.unscorable_zero").verdict is Verdict.FAIL
    finite = run(step, SPEC, "advantages.finite")
    assert finite.verdict is Verdict.FAIL and finite.where.row == 0


def test_token_level_advantages_constant_along_rows_are_accepted():
    rewards = varied_rewards(6)
    advantages = group_advantages(rewards, G).unsqueeze(1).expand(-1, 5).clone()
    mask = torch.ones(PROMPTS * G, 5, dtype=torch.long)
    step = step_of(rewards, advantages)
    step.tensors["completion_mask"] = mask
    assert run(step, SPEC, "advantages.group_sum_zero").verdict is Verdict.PASS
    advantages[0, 3] += 1.0  # genuinely token-level: the group checks cannot judge it
    assert run(step, SPEC, "advantages.group_sum_zero").verdict is Verdict.INCONCLUSIVE


def test_partial_groups_are_excluded_not_failed():
    rewards = varied_rewards(7)
    advantages = group_advantages(rewards, G)
    step = step_of(rewards[: G + 2], advantages[: G + 2], torch.tensor([0] * G + [1, 1]))
    finding = run(step, SPEC, "advantages.group_sum_zero")
    assert finding.verdict is Verdict.PASS and "1 group" in finding.explanation


def test_sign_follows_rewards_fires_on_rows_shuffled_within_a_group():
    rewards = torch.tensor([0.0, 1.0, 0.5, 0.25] * PROMPTS)
    advantages = group_advantages(rewards, G)
    assert run(step_of(rewards, advantages), SPEC, "advantages.sign_follows_rewards").verdict is Verdict.PASS
    shuffled = advantages.clone()
    shuffled[[G, G + 1]] = shuffled[[G + 1, G]]  # prompt 1: generations 0 and 1 swapped
    finding = run(step_of(rewards, shuffled), SPEC, "advantages.sign_follows_rewards")
    assert finding.verdict is Verdict.FAIL and finding.where.prompt == 1 and finding.where.generation == 0
    # the group still sums to zero, so only this check sees it
    assert run(step_of(rewards, shuffled), SPEC, "advantages.group_sum_zero").verdict is Verdict.PASS


def test_epsilon_negligible_with_batch_and_no_scaling():
    rewards = varied_rewards(8)
    grouped = rewards.view(-1, G)
    centred = (grouped - grouped.mean(1, keepdim=True)).view(-1)
    batch_scaled = centred / (rewards.std() + 1e-4)
    assert (
        run(
            step_of(rewards, batch_scaled),
            SPEC.replace(scale_rewards="batch"),
            "advantages.epsilon_negligible",
        ).verdict
        is Verdict.PASS
    )
    swamped = centred / (rewards.std() + 1e4)
    assert (
        run(
            step_of(rewards, swamped), SPEC.replace(scale_rewards="batch"), "advantages.epsilon_negligible"
        ).verdict
        is Verdict.FAIL
    )
    assert (
        run(
            step_of(rewards, centred), SPEC.replace(scale_rewards="none"), "advantages.epsilon_negligible"
        ).verdict
        is Verdict.PASS
    )


def test_normalize_then_sum_disables_the_total_reward_checks():
    rewards = torch.tensor([1.0, 1.0, 1.0, 1.0] * PROMPTS)
    advantages = torch.tensor(
        [1.7, -1.7, 0.4, -0.4] * PROMPTS
    )  # z-scores of functions that cancel in the total
    spec = SPEC.replace(multi_objective_aggregation="normalize_then_sum")
    for check_id in ("advantages.bounded", "advantages.constant_group_zero", "advantages.epsilon_negligible"):
        assert run(step_of(rewards, advantages), spec, check_id).verdict is Verdict.INCONCLUSIVE
    assert run(step_of(rewards, advantages), SPEC, "advantages.constant_group_zero").verdict is Verdict.FAIL


def test_misgrouping_is_not_misread_as_a_large_epsilon():
    rewards = varied_rewards(1)
    true_groups = torch.arange(PROMPTS).repeat(G)
    buggy = group_advantages(rewards, G)
    step = step_of(rewards, buggy, true_groups)
    assert run(step, SPEC, "advantages.group_sum_zero").verdict is Verdict.FAIL
    assert run(step, SPEC, "advantages.epsilon_negligible").verdict is not Verdict.FAIL
