"""rederive.old_logps_required's figure on a small CPU step in numpy: the same finding as torch's path."""

from __future__ import annotations

import itertools

import pytest
import torch

import grpo_check.rederive.checks_ratio as checks_ratio
from grpo_check.config import GRPOSpec
from grpo_check.trace.model import Trace, TraceStep


def _findings(trace, monkeypatch):
    used = []
    original = checks_ratio._moved_host
    with monkeypatch.context() as patch:
        patch.setattr(checks_ratio, "_moved_host", lambda *a: used.append(original(*a)) or used[-1])
        fast = checks_ratio.old_logps_check(trace.steps[1], GRPOSpec(), trace)
    with monkeypatch.context() as patch:
        patch.setattr(checks_ratio, "_moved_host", lambda *a: None)
        general = checks_ratio.old_logps_check(trace.steps[1], GRPOSpec(), trace)
    return fast, general, [u for u in used if u is not None]


@pytest.mark.parametrize("seed", range(10))
def test_numpy_figure_equals_torchs(seed, monkeypatch) -> None:
    generator = torch.Generator().manual_seed(seed)
    decided = 0
    for dtypes, change, mask_kind in itertools.product(
        ((torch.float32, torch.float32), (torch.float32, torch.float64), (torch.bfloat16, torch.bfloat16)),
        ("some", "none", "nan", "masked_only"),
        ("int", "float", "none", "other_shape"),
    ):
        logps = -torch.rand(3, 4, generator=generator, dtype=torch.float64)
        old = logps.clone()
        mask = torch.ones(3, 4, dtype=torch.long)
        mask[2, 3] = 0
        if change == "some":
            old[0, 1] -= 0.125
            old[1, 2] += 1e-7
        elif change == "nan":
            old[1, 1] = float("nan")
        elif change == "masked_only":
            old[2, 3] -= 1.0
        tensors = {"logps": logps.to(dtypes[0]), "old_logps": old.to(dtypes[1])}
        if mask_kind == "int":
            tensors["completion_mask"] = mask
        elif mask_kind == "float":
            tensors["completion_mask"] = mask.float()
        elif mask_kind == "other_shape":
            tensors["completion_mask"] = mask[:, :2]
        gen = TraceStep(
            tensors={"group_index": torch.tensor([0, 0, 0])}, meta={"scope": "generation", "step": 3}
        )
        gen.meta["generation"] = 4
        micro = TraceStep(tensors=tensors, meta={"scope": "micro_batch", "generation": 4, "step": 5})
        trace = Trace(manifest={}, steps=[gen, micro])
        fast, general, used = _findings(trace, monkeypatch)
        assert repr(fast.to_dict()) == repr(general.to_dict()), (dtypes, change, mask_kind)
        decided += len(used)
    assert decided
