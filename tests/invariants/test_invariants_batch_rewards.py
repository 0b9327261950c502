"""Batch and rewards invariants: each fires on a deliberately broken input and is silent on the correct one."""

from __future__ import annotations

import torch
from invariants_builders import EOS, build_step, only, with_tensors

from grpo_check.config import GRPOSpec
from grpo_check.findings import Verdict
from grpo_check.invariants import run_invariants
from grpo_check.trace.model import TraceStep


def run(step, spec, check_id):
    return only(run_invariants(step, spec, checks=[check_id]), check_id)


# --- masks ------------------------------------------------------------------------------------------


def test_masks_binary():
    built = build_step()
    assert run(built.step, built.spec, "batch.masks_binary").verdict is Verdict.PASS
    soft = built.step["completion_mask"].float()
    soft[1, 0] = 0.5
    finding = run(with_tensors(built.step, completion_mask=soft), built.spec, "batch.masks_binary")
    assert finding.verdict is Verdict.FAIL
    assert (finding.where.row, finding.where.token) == (1, 0)


def test_mask_prefix_fires_on_a_hole():
    built = build_step(T=6)
    assert run(built.step, built.spec, "batch.mask_prefix").verdict is Verdict.PASS
    holed = torch.ones(2, 6, dtype=torch.long)
    holed[1, 2] = 0
    step = TraceStep(tensors={"completion_mask": holed})
    finding = run(step, None, "batch.mask_prefix")
    assert finding.verdict is Verdict.FAIL
    assert (finding.where.row, finding.where.token) == (1, 3)


def _eos_batch(pad: int):
    """Three rows: EOS at position 2, truncated (no EOS), EOS at position 0; padding with ``pad``."""
    ids = torch.tensor([[5, 6, EOS, pad, pad], [5, 6, 7, 8, 9], [EOS, pad, pad, pad, pad]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    return ids, mask


def test_mask_prefix_eos_silent_on_correct_masks_including_pad_equal_eos():
    for pad in (0, EOS):
        ids, mask = _eos_batch(pad)
        step = TraceStep(
            tensors={"completion_ids": ids, "completion_mask": mask},
            meta={"eos_token_ids": [EOS], "pad_token_id": pad},
        )
        assert run(step, GRPOSpec(max_completion_length=5), "batch.mask_prefix_eos").verdict is Verdict.PASS


def test_mask_prefix_eos_fires_when_tokens_after_eos_are_counted():
    ids, mask = _eos_batch(0)
    mask[0, 3] = 1  # one token after the EOS
    step = TraceStep(tensors={"completion_ids": ids, "completion_mask": mask}, meta={"eos_token_ids": [EOS]})
    finding = run(step, None, "batch.mask_prefix_eos")
    assert finding.verdict is Verdict.FAIL and finding.catalog_id == "11"
    assert (finding.where.row, finding.where.token) == (0, 3)
    assert "after the first EOS" in finding.explanation


def test_mask_prefix_eos_fires_when_pad_equal_eos_masks_the_eos():
    ids, _ = _eos_batch(EOS)
    buggy_mask = (ids != EOS).long()  # mask = ids != pad_token_id, with pad == eos
    step = TraceStep(
        tensors={"completion_ids": ids, "completion_mask": buggy_mask},
        meta={"eos_token_ids": [EOS], "pad_token_id": EOS},
    )
    finding = run(step, None, "batch.mask_prefix_eos")
    assert finding.verdict is Verdict.FAIL
    assert (
        "EOS token itself is masked" in finding.explanation and "pad_token_id == eos" in finding.explanation
    )
    assert finding.where.token_id == EOS


def test_mask_prefix_eos_fires_when_a_secondary_eos_is_ignored():
    second_eos = 11
    ids = torch.tensor([[5, second_eos, 6, EOS, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])  # only the primary EOS was honoured
    step = TraceStep(
        tensors={"completion_ids": ids, "completion_mask": mask}, meta={"eos_token_ids": [EOS, second_eos]}
    )
    assert run(step, None, "batch.mask_prefix_eos").verdict is Verdict.FAIL
    step.meta["eos_token_ids"] = [EOS]
    assert run(step, None, "batch.mask_prefix_eos").verdict is Verdict.PASS


def test_mask_prefix_eos_not_captured_without_eos_ids():
    ids, mask = _eos_batch(0)
    step = TraceStep(tensors={"completion_ids": ids, "completion_mask": mask})
    finding = run(step, None, "batch.mask_prefix_eos")
    assert finding.verdict is Verdict.NOT_CAPTURED and "meta.eos_token_ids" in finding.explanation


def test_mask_truncated_completions_zero_rows_are_accepted():
    ids, mask = _eos_batch(0)
    mask[1] = 0  # the truncated row zeroed on purpose
    step = TraceStep(tensors={"completion_ids": ids, "completion_mask": mask}, meta={"eos_token_ids": [EOS]})
    assert (
        run(step, GRPOSpec(mask_truncated_completions=True), "batch.mask_prefix_eos").verdict is Verdict.PASS
    )
    assert run(step, GRPOSpec(), "batch.mask_prefix_eos").verdict is Verdict.FAIL


# --- grouping and text ------------------------------------------------------------------------------


def test_group_sizes():
    spec = GRPOSpec(num_generations=2)
    assert (
        run(TraceStep(tensors={"group_index": torch.tensor([0, 0, 1, 1])}), spec, "batch.group_sizes").verdict
        is Verdict.PASS
    )
    too_big = run(TraceStep(tensors={"group_index": torch.tensor([0, 0, 0, 1])}), spec, "batch.group_sizes")
    assert too_big.verdict is Verdict.FAIL and too_big.where.prompt == 0
    partial = run(TraceStep(tensors={"group_index": torch.tensor([0, 0, 1])}), spec, "batch.group_sizes")
    assert partial.verdict is Verdict.WARN and partial.where.prompt == 1


def test_text_nonempty_fires_on_blanked_text():
    built = build_step(seed=2)
    assert run(built.step, built.spec, "batch.text_nonempty").verdict is Verdict.PASS
    blanked = TraceStep(tensors=built.step.tensors, completion_text=[""] * 12, meta=built.step.meta)
    finding = run(blanked, built.spec, "batch.text_nonempty")
    assert finding.verdict is Verdict.FAIL and finding.catalog_id == "S3"
    misaligned = TraceStep(tensors=built.step.tensors, completion_text=["x"] * 5, meta=built.step.meta)
    assert run(misaligned, built.spec, "batch.text_nonempty").verdict is Verdict.FAIL


def test_text_nonempty_allows_an_eos_only_completion_to_decode_to_nothing():
    ids = torch.tensor([[EOS, 0], [5, EOS]])
    mask = torch.tensor([[1, 0], [1, 1]])
    step = TraceStep(
        tensors={"completion_ids": ids, "completion_mask": mask},
        completion_text=["", "f"],
        meta={"eos_token_ids": [EOS]},
    )
    assert run(step, None, "batch.text_nonempty").verdict is Verdict.PASS
    step.completion_text = ["", ""]
    assert run(step, None, "batch.text_nonempty").where.row == 1


# --- rewards ----------------------------------------------------------------------------------------


def test_rewards_finite_allows_nan_only_as_unscorable_marker():
    per_func = torch.tensor([[1.0, float("nan")], [float("nan"), float("nan")], [0.0, 1.0]])
    total = torch.tensor([1.0, float("nan"), 1.0])
    step = TraceStep(tensors={"rewards_per_func": per_func, "rewards": total})
    assert run(step, None, "rewards.finite").verdict is Verdict.PASS
    leaked = TraceStep(
        tensors={"rewards_per_func": per_func, "rewards": torch.tensor([float("nan"), float("nan"), 1.0])}
    )
    finding = run(leaked, None, "rewards.finite")
    assert finding.verdict is Verdict.FAIL and finding.where.row == 0
    infinite = TraceStep(tensors={"rewards_per_func": torch.tensor([[1.0], [float("inf")]])})
    assert run(infinite, None, "rewards.finite").verdict is Verdict.FAIL


def test_total_is_weighted_sum_fires_when_weights_are_not_applied():
    per_func = torch.tensor([[1.0, 0.0], [0.5, 1.0], [0.0, float("nan")]])
    weights = torch.tensor([2.0, 0.5])
    correct = (per_func * weights).nansum(1)
    step = TraceStep(tensors={"rewards_per_func": per_func, "reward_weights": weights, "rewards": correct})
    assert run(step, None, "rewards.total_is_weighted_sum").verdict is Verdict.PASS
    unweighted = with_tensors(step, rewards=per_func.nansum(1))
    finding = run(unweighted, None, "rewards.total_is_weighted_sum")
    assert finding.verdict is Verdict.FAIL and finding.where.row == 0


def test_text_nonempty_counts_only_tokens_before_the_first_eos():
    """A mask running past EOS (catalog 11) is not also a blank decode (S3): decoding stops at the EOS."""
    ids = torch.tensor([[EOS, 5, 6], [5, EOS, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    step = TraceStep(
        tensors={"completion_ids": ids, "completion_mask": mask},
        completion_text=["", "f"],
        meta={"eos_token_ids": [EOS]},
    )
    assert run(step, None, "batch.text_nonempty").verdict is Verdict.PASS


def test_text_nonempty_trusts_the_tokenizers_decode_of_special_tokens():
    """A sampled [pad, unk, eos] completion decodes to "" with skip_special_tokens: not a blanked text (S3).
    Found on the demo's bnpo cell at step 10: the tiny policy samples special tokens now and then."""
    PAD, UNK = 0, 1
    ids = torch.tensor([[PAD, UNK, EOS], [5, 6, EOS]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 1]])
    step = TraceStep(
        tensors={"completion_ids": ids, "completion_mask": mask},
        completion_text=["", "fg"],
        meta={"eos_token_ids": [EOS], "pad_token_id": PAD, "decoded_completion_text": ["", "fg"]},
    )
    assert run(step, None, "batch.text_nonempty").verdict is Verdict.PASS
    step.completion_text = ["", ""]  # the second row's tokens decode to "fg", but the rewards saw ""
    blanked = run(step, None, "batch.text_nonempty")
    assert blanked.verdict is Verdict.FAIL and blanked.where.row == 1 and "'fg'" in blanked.explanation


def test_text_nonempty_without_a_decode_does_not_count_sampled_pad_tokens():
    PAD = 0
    ids = torch.tensor([[PAD, PAD, EOS], [PAD, 5, EOS]])
    mask = torch.ones(2, 3, dtype=torch.long)
    step = TraceStep(
        tensors={"completion_ids": ids, "completion_mask": mask},
        completion_text=["", ""],
        meta={"eos_token_ids": [EOS], "pad_token_id": PAD},
    )
    finding = run(step, None, "batch.text_nonempty")
    assert finding.verdict is Verdict.FAIL and finding.where.row == 1  # row 0 is pads only: no text expected
    step.completion_text = ["", "f"]
    assert run(step, None, "batch.text_nonempty").verdict is Verdict.PASS
