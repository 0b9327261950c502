"""The pure re-derivation maths, against hand-worked values."""

from __future__ import annotations

import torch

from grpo_check.config import GRPOSpec
from grpo_check.rederive import (
    completion_ends,
    expected_completion_mask,
    loss_tokens_per_row,
    normalise_eos_ids,
    old_logps_required_by_schedule,
    optimizer_steps_between,
    unscorable,
    uses_global_token_count,
    window_token_normalizer,
)


def test_eos_union_keeps_every_source_once():
    assert normalise_eos_ids(2, [3, 2], None, (7,)) == [2, 3, 7]
    assert normalise_eos_ids(None) == []


def test_ends_at_the_first_id_of_any_eos():
    ids = torch.tensor([[4, 3, 2, 0], [4, 2, 3, 0], [4, 4, 4, 4], [4, 4, 0, 0]])
    ends = completion_ends(ids, [2, 3], pad_token_id=0)
    assert ends.lengths.tolist() == [2, 2, 4, 2]
    assert ends.truncated.tolist() == [False, False, True, True]
    assert ends.eos_id.tolist() == [3, 2, -1, -1]
    only_tokenizer = completion_ends(ids, [2], pad_token_id=0)
    assert only_tokenizer.lengths.tolist() == [3, 2, 4, 2]


def test_pad_equal_to_eos_ends_at_the_first():
    ids = torch.tensor([[5, 2, 2, 2], [5, 5, 5, 5]])
    ends = completion_ends(ids, [2], pad_token_id=2)
    assert ends.lengths.tolist() == [2, 4] and ends.truncated.tolist() == [False, True]


def test_expected_mask_zeroes_truncated_rows_only_when_asked():
    ends = completion_ends(torch.tensor([[5, 2, 0], [5, 5, 5]]), [2], pad_token_id=0)
    assert expected_completion_mask(ends, 3, mask_truncated=False).int().tolist() == [[1, 1, 0], [1, 1, 1]]
    assert expected_completion_mask(ends, 3, mask_truncated=True).int().tolist() == [[1, 1, 0], [0, 0, 0]]


def test_loss_tokens_multiply_by_tool_mask():
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    tool = torch.tensor([[1, 0, 1, 1], [1, 1, 1, 1]])
    assert loss_tokens_per_row(mask, tool).tolist() == [2.0, 2.0]
    assert loss_tokens_per_row(mask).tolist() == [3.0, 2.0]


def test_which_loss_types_divide_by_n():
    assert [t for t in ("grpo", "bnpo", "dr_grpo", "dapo", "cispo", "vespo", "sapo", "luspo")
            if uses_global_token_count(GRPOSpec(loss_type=t))] == ["dapo", "cispo", "vespo"]  # fmt: skip


def test_window_normalizer_is_n3():
    # TRL PR #6024's case: S = 4, K = 2, one process: a window sees half the generation batch
    assert (
        window_token_normalizer(
            num_items_in_batch=100, num_processes=1, gradient_accumulation_steps=2, steps_per_generation=4
        )
        == 50.0
    )
    assert (
        window_token_normalizer(
            num_items_in_batch=0, num_processes=1, gradient_accumulation_steps=1, steps_per_generation=1
        )
        == 1.0
    )


def test_schedule_says_when_old_logps_are_needed():
    assert not old_logps_required_by_schedule(
        gradient_accumulation_steps=4, steps_per_generation=4, num_iterations=1
    )
    assert not old_logps_required_by_schedule(
        gradient_accumulation_steps=4, steps_per_generation=2, num_iterations=1
    )
    assert old_logps_required_by_schedule(
        gradient_accumulation_steps=3, steps_per_generation=2, num_iterations=1
    )
    assert old_logps_required_by_schedule(
        gradient_accumulation_steps=1, steps_per_generation=1, num_iterations=2
    )
    assert old_logps_required_by_schedule(
        gradient_accumulation_steps=1, steps_per_generation=2, num_iterations=1
    )
    assert optimizer_steps_between(3, 5) == 2


def test_unscorable_rows_are_all_nan():
    nan = float("nan")
    assert unscorable(torch.tensor([[1.0, nan], [nan, nan], [0.0, 0.0]])).tolist() == [False, True, False]


def test_a_multi_turn_completion_ends_after_its_last_tool_output():
    # turn 1 ends with EOS 2, tool output (tool_mask 0, holding an EOS too), turn 2 ends with EOS 2
    ids = torch.tensor([[5, 2, 8, 2, 6, 2, 0], [5, 2, 0, 0, 0, 0, 0]])
    tool = torch.tensor([[1, 1, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]])
    ends = completion_ends(ids, [2], pad_token_id=0, tool_mask=tool)
    assert ends.lengths.tolist() == [6, 2] and ends.truncated.tolist() == [False, False]
    assert completion_ends(ids, [2], pad_token_id=0).lengths.tolist() == [2, 2]
