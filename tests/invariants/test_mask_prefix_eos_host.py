"""batch.mask_prefix_eos decided in numpy on a small CPU batch: the same outcome as torch's path, field for
field, on correct masks and on every way a mask can end wrongly."""

from __future__ import annotations

import itertools

import pytest
import torch

import grpo_check.invariants.batch as batch
from grpo_check.config import GRPOSpec
from grpo_check.invariants.batch import mask_prefix_eos
from grpo_check.trace.model import TraceStep


def _outcomes(step, spec, monkeypatch):
    calls = []
    original = batch._masks_end_at_eos_host
    with monkeypatch.context() as patch:
        patch.setattr(batch, "_masks_end_at_eos_host", lambda *a: calls.append(original(*a)) or calls[-1])
        fast = mask_prefix_eos(step, spec)
    with monkeypatch.context() as patch:
        patch.setattr(batch, "_masks_end_at_eos_host", lambda *a: False)
        general = mask_prefix_eos(step, spec)
    return fast, general, calls


def _expected_mask(ids: torch.Tensor, eos: list[int]) -> torch.Tensor:
    is_eos = torch.isin(ids, torch.tensor(eos, dtype=ids.dtype))
    first = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, ids.shape[1])
    return (torch.arange(ids.shape[1]) < first.unsqueeze(1)).long()


@pytest.mark.parametrize("seed", range(30))
def test_numpy_decision_equals_torchs(seed, monkeypatch) -> None:
    generator = torch.Generator().manual_seed(seed)
    rows, width = (
        int(torch.randint(1, 7, (1,), generator=generator)),
        int(torch.randint(1, 7, (1,), generator=generator)),
    )
    ids = torch.randint(0, 5, (rows, width), generator=generator)
    decided = 0
    for eos, pad, max_length, mask_truncated, flags, broken in itertools.product(
        ([2], [2, 3], []), (None, 0, 2), (None, width), (False, True), (None, "bool", "float"), range(4)
    ):
        mask = _expected_mask(ids, eos)
        if broken == 1:  # a token after the first EOS counted
            mask[0] = 1
        elif broken == 2:  # the mask ends early
            mask[-1, -1] = 0
        elif broken == 3:  # a float mask with a NaN hole
            mask = mask.float()
            mask[0, 0] = float("nan")
        meta = {"eos_token_ids": eos}
        if pad is not None:
            meta["pad_token_id"] = pad
        tensors = {"completion_ids": ids, "completion_mask": mask}
        if flags is not None:
            truncated = ~torch.isin(ids, torch.tensor(eos, dtype=ids.dtype)).any(1)
            tensors["truncated"] = truncated if flags == "bool" else truncated.float()
        step = TraceStep(tensors=tensors, meta=meta)
        spec = GRPOSpec(max_completion_length=max_length, mask_truncated_completions=mask_truncated)
        fast, general, calls = _outcomes(step, spec, monkeypatch)
        assert repr(fast) == repr(general), (eos, pad, max_length, mask_truncated, flags, broken)
        decided += sum(calls)
    assert decided  # the numpy path passed some of these steps itself


def test_tensors_numpy_cannot_view_take_torchs_path() -> None:
    ids = torch.tensor([[5, 2, 0]])
    step = TraceStep(
        tensors={"completion_ids": ids, "completion_mask": torch.tensor([[1, 1, 0]], dtype=torch.bfloat16)},
        meta={"eos_token_ids": [2]},
    )
    assert not batch._masks_end_at_eos_host(step, None, ids, step["completion_mask"], [2])
    assert [finding.verdict.name for finding in mask_prefix_eos(step, None)] == ["PASS"]
    step.tensors["truncated"] = torch.tensor([False, False])  # not one flag per row
    step.tensors["completion_mask"] = torch.tensor([[1, 1, 0]])
    assert not batch._masks_end_at_eos_host(step, None, ids, step["completion_mask"], [2])
