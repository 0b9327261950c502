"""Strategies generate valid GRPO batches and reach every edge case they promise."""

from __future__ import annotations

import pytest
import torch
from hypothesis import Phase, find, given, settings
from hypothesis import strategies as st

from grpo_check.config import GRPOSpec
from grpo_check.testing.strategies import (
    EXTREME_LOGPS,
    GRPOBatch,
    completion_masks,
    group_indices,
    grpo_batches,
    make_batch,
    rewards,
    specs,
)

FAST = settings(max_examples=30, deadline=None, database=None)
SEARCH = settings(
    max_examples=1000, deadline=None, database=None, phases=[Phase.generate]
)  # no shrinking: fast


def _assert_valid(batch: GRPOBatch) -> None:
    B, T = batch.completion_mask.shape
    G = batch.num_generations
    # equal group sizes, contiguous groups
    counts = torch.bincount(batch.group_index)
    assert bool((counts == G).all()), counts
    assert torch.equal(batch.group_index, torch.arange(B // G).repeat_interleave(G))
    # masks are prefixes: once a 0 appears, no 1 follows
    mask = batch.completion_mask
    assert bool((mask[:, 1:] <= mask[:, :-1]).all())
    assert set(mask.unique().tolist()) <= {0, 1}
    # rewards: NaN exactly where every reward function is NaN
    assert torch.equal(torch.isnan(batch.rewards), torch.isnan(batch.rewards_per_func).all(dim=1))
    # log-probs are log-probabilities
    for name in ("logps", "old_logps", "ref_logps"):
        tensor = getattr(batch, name)
        assert tensor.shape == (B, T)
        assert bool((tensor <= 0).all()), name
        assert bool(tensor.isfinite().all()), name
    assert batch.advantages.shape == (B,)
    assert bool((batch.advantages[torch.isnan(batch.rewards)] == 0).all())
    assert batch.per_token_loss.shape == (B, T)
    assert batch.completion_ids.shape == (B, T)
    assert batch.spec.max_completion_length >= T
    assert batch.num_items_in_batch == int(mask.sum())


@FAST
@given(grpo_batches())
def test_drawn_batches_are_valid(batch: GRPOBatch) -> None:
    _assert_valid(batch)
    assert batch.dtype in (torch.float32, torch.bfloat16)


@FAST
@given(grpo_batches(with_logits=True, prompt_length=3, vocab_size=7, num_reward_functions=2))
def test_logits_and_input_ids_are_consistent(batch: GRPOBatch) -> None:
    _assert_valid(batch)
    B, T = batch.completion_ids.shape
    assert batch.logits.shape == (B, 3 + T, 7)
    assert torch.equal(batch.input_ids[:, 3:], batch.completion_ids)
    assert batch.rewards_per_func.shape == (B, 2)


@FAST
@given(grpo_batches(nan_rewards=False, masked_rows=False, zero_variance=False, extreme_logps=False))
def test_edge_cases_can_be_switched_off(batch: GRPOBatch) -> None:
    _assert_valid(batch)
    assert not bool(torch.isnan(batch.rewards).any())
    assert bool((batch.lengths >= 1).all())
    assert bool((batch.logps >= -5.0).all())  # only the seeded range, no planted extremes


@pytest.mark.parametrize(
    ("name", "condition"),
    [
        ("several prompts", lambda b: b.num_prompts >= 2),
        ("all-masked row", lambda b: bool((b.lengths == 0).any())),
        ("ragged lengths", lambda b: len(set(b.lengths.tolist())) >= 3),
        (
            "zero-variance group (G >= 2, all rewards equal)",
            lambda b: any(
                len(set(b.rewards[b.group_index == g].tolist())) == 1
                and not torch.isnan(b.rewards[b.group_index == g]).any()
                for g in range(b.num_prompts)
            ),
        ),
        ("NaN reward", lambda b: bool(torch.isnan(b.rewards).any())),
        (
            "whole group unscorable",
            lambda b: any(
                bool(torch.isnan(b.rewards[b.group_index == g]).all()) for g in range(b.num_prompts)
            ),
        ),
        ("extreme log-prob", lambda b: bool((b.logps.float() <= -30).any())),
        ("certain token (log-prob 0)", lambda b: bool((b.logps == 0).any())),
        ("bf16 inputs", lambda b: b.dtype == torch.bfloat16),
        ("fp32 inputs", lambda b: b.dtype == torch.float32),
        ("group size 4", lambda b: b.num_generations == 4),
        (
            "ratio beyond the clip range",
            lambda b: bool(((b.logps.float() - b.old_logps.float()).exp() > 1.2).any()),
        ),
    ],
)
def test_every_edge_case_is_reachable(name: str, condition) -> None:
    example = find(grpo_batches(), condition, settings=SEARCH)
    _assert_valid(example)
    assert condition(example), name


def test_planted_extremes_use_the_documented_values() -> None:
    example = find(
        grpo_batches(dtypes=(torch.float32,)), lambda b: bool((b.logps == -100.0).any()), settings=SEARCH
    )
    assert -100.0 in EXTREME_LOGPS
    assert bool((example.logps == -100.0).any())


@FAST
@given(st.data())
def test_building_blocks_compose(data) -> None:
    index = data.draw(group_indices(num_prompts=st.integers(2, 3), num_generations=3, contiguous=False))
    assert torch.equal(torch.bincount(index), torch.full((int(index.max()) + 1,), 3))
    reward = data.draw(rewards(index, nan_rewards=False))
    assert reward.shape == index.shape and not bool(torch.isnan(reward).any())
    mask = data.draw(completion_masks(index.numel(), 4, masked_rows=False))
    assert mask.shape == (index.numel(), 4) and bool((mask[:, 0] == 1).all())


@FAST
@given(specs(loss_type="dr_grpo"))
def test_specs_are_valid_and_respect_fixed_fields(spec: GRPOSpec) -> None:
    assert isinstance(spec, GRPOSpec)
    assert spec.loss_type == "dr_grpo"
    assert spec.aggregation_effective == "seq_mean_token_sum_norm"


def test_specs_cover_conventions() -> None:
    assert find(specs(), lambda s: s.std == "population" and s.adv_epsilon == 1e-8, settings=SEARCH)
    assert find(specs(), lambda s: s.importance_sampling_level == "sequence", settings=SEARCH)


@FAST
@given(grpo_batches(spec=specs()))
def test_batches_take_a_spec_strategy(batch: GRPOBatch) -> None:
    _assert_valid(batch)
    assert batch.spec.num_generations == batch.num_generations


def test_make_batch_is_deterministic_and_has_edge_cases() -> None:
    first, second = make_batch(seed=3), make_batch(seed=3)
    for name, tensor in first.tensors().items():
        assert torch.equal(tensor.nan_to_num(-7.0), second.tensors()[name].nan_to_num(-7.0)), name
    _assert_valid(first)
    assert bool((first.lengths == 0).any())
    assert bool(torch.isnan(first.rewards).any())
    last_group = first.rewards[first.group_index == first.num_prompts - 1]
    assert len(set(last_group.tolist())) == 1
    assert "prompt 0" in first.describe()


def test_to_trace_step_uses_canonical_names() -> None:
    from grpo_check.trace.model import TENSOR_STAGE

    step = make_batch().to_trace_step(step=5)
    assert set(step.tensors) <= set(TENSOR_STAGE)
    assert step.step == 5 and step.meta["num_items_in_batch"] == int(step["completion_mask"].sum())
