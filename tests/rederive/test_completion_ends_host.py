"""completion_ends on a small CPU batch (numpy) equals torch's path, field for field, on every kind of row."""

from __future__ import annotations

import itertools

import pytest
import torch

import grpo_check.rederive.derive as derive
from grpo_check.rederive.derive import completion_ends


def _both(ids, eos, pad, tool, monkeypatch):
    fast = completion_ends(ids, eos, pad, tool)
    with monkeypatch.context() as patch:
        patch.setattr(derive, "_host_ids", lambda ids, tool_mask: None)
        general = completion_ends(ids, eos, pad, tool)
    return fast, general


def _random_ids(generator: torch.Generator, *, most: int, vocabulary: int) -> torch.Tensor:
    """Token ids of 1 to ``most`` rows and columns, each below ``vocabulary``."""
    rows, width = (int(torch.randint(1, most + 1, (1,), generator=generator)) for _ in range(2))
    return torch.randint(0, vocabulary, (rows, width), generator=generator)


@pytest.mark.parametrize("seed", range(40))
def test_numpy_ends_equal_torchs(seed, monkeypatch) -> None:
    generator = torch.Generator().manual_seed(seed)
    ids = _random_ids(generator, most=8, vocabulary=6)
    rows, width = ids.shape
    eos_options = ([], [2], [2, 3], [0], [5, 0, 2])
    pads = (None, 0, 2, 4)
    tools = (
        None,
        torch.randint(0, 2, (rows, width), generator=generator),
        torch.randint(0, 2, (rows, width), generator=generator).float(),
        torch.ones(rows, width + 1),  # shaped otherwise: unused
    )
    for eos, pad, tool in itertools.product(eos_options, pads, tools):
        fast, general = _both(ids, eos, pad, tool, monkeypatch)
        for name in ("lengths", "truncated", "first_eos", "eos_id"):
            got, want = getattr(fast, name), getattr(general, name)
            assert got.dtype == want.dtype and torch.equal(got, want), (eos, pad, name, got, want)


def test_the_numpy_path_runs_on_a_small_cpu_batch_only(monkeypatch) -> None:
    calls = []
    original = derive._completion_ends_host
    monkeypatch.setattr(derive, "_completion_ends_host", lambda *a: calls.append(1) or original(*a))
    ids = torch.tensor([[5, 2, 0], [5, 6, 7]])
    completion_ends(ids, [2], 0)
    assert calls == [1]
    completion_ends(ids.int(), [2], 0)  # int32 ids: torch's path
    import grpo_check._step_cache as step_cache_module

    monkeypatch.setattr(step_cache_module, "HOST_ELEMENTS", 0)
    completion_ends(ids, [2], 0)  # too large for a numpy view: torch's path
    assert calls == [1]


def _check_both(step, spec, monkeypatch):
    import grpo_check.rederive.checks_batch as checks_batch

    decided = []
    original = checks_batch._rows_agree_host
    with monkeypatch.context() as patch:
        patch.setattr(checks_batch, "_rows_agree_host", lambda *a: _kept(decided, original(*a)))
        fast = checks_batch.completion_ends_check(step, spec, None)
    with monkeypatch.context() as patch:
        patch.setattr(checks_batch, "_rows_agree_host", lambda *a: None)
        general = checks_batch.completion_ends_check(step, spec, None)
    return fast, general, [d for d in decided if d is not None]


def _kept(store: list, value):
    store.append(value)
    return value


@pytest.mark.parametrize("seed", range(25))
def test_the_numpy_decision_of_the_ends_check_equals_torchs(seed, monkeypatch) -> None:
    from grpo_check.config import GRPOSpec
    from grpo_check.trace.model import TraceStep

    ids = _random_ids(torch.Generator().manual_seed(seed), most=6, vocabulary=5)
    width = ids.shape[1]
    decided = 0
    for eos, pad, mask_truncated, flags, broken in itertools.product(
        ([2], [2, 3]), (None, 0, 2), (False, True), (None, "right", "wrong", "float"), range(4)
    ):
        ends = completion_ends(ids, eos, pad)
        mask = derive.expected_completion_mask(ends, width, mask_truncated=mask_truncated).long()
        if broken == 1:
            mask[0] = 1
        elif broken == 2:
            mask[-1, -1] = 1 - mask[-1, -1]
        elif broken == 3:
            mask = mask.float()
            mask[0, -1] = float("nan")
        tensors = {"completion_ids": ids, "completion_mask": mask}
        if flags == "right":
            tensors["truncated"] = ends.truncated.clone()
        elif flags == "wrong":
            tensors["truncated"] = ~ends.truncated
        elif flags == "float":
            tensors["truncated"] = ends.truncated.float()
        meta = {"eos_token_ids": eos, **({} if pad is None else {"pad_token_id": pad})}
        step = TraceStep(tensors=tensors, meta=meta)
        fast, general, used = _check_both(
            step, GRPOSpec(mask_truncated_completions=mask_truncated), monkeypatch
        )
        assert repr(fast.to_dict()) == repr(general.to_dict()), (eos, pad, mask_truncated, flags, broken)
        decided += len(used)
    assert decided  # the numpy path passed some of these steps itself
