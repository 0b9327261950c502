"""The numpy twins of the group statistics give the torch code's values bit for bit."""

from __future__ import annotations

import random

import pytest
import torch

from grpo_check.config import GRPOSpec
from grpo_check.reference import _host, advantages

_SPECIAL = [0.0, -0.0, 1.0, -1.0, 0.5, float("nan"), float("inf"), -float("inf"), 1e-300, 1e16, 1 / 3, 7.25]


def _torch_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_host, "group_mean_std", lambda *args: None)
    monkeypatch.setattr(_host, "dense_group_ids", lambda *args: None)
    monkeypatch.setattr(_host, "group_advantages", lambda *args: None)


def _reprs(t: torch.Tensor) -> tuple[torch.dtype, tuple[int, ...], list[str]]:
    return t.dtype, tuple(t.shape), [repr(v) for v in t.reshape(-1).tolist()]


def _cases(seed: int, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    rng = random.Random(seed)
    cases = []
    for _ in range(n):
        rows = rng.randint(1, 30)
        values = [
            rng.choice(_SPECIAL) if rng.random() < 0.4 else rng.gauss(0.0, rng.choice([1e-8, 1.0, 1e8]))
            for _ in range(rows)
        ]
        if rng.random() < 0.5:
            groups = torch.arange(rows) // rng.randint(1, 5)
        else:
            groups = torch.tensor([rng.randint(0, 6) for _ in range(rows)])
        cases.append((torch.tensor(values, dtype=torch.float64), groups))
    return cases


@pytest.mark.parametrize("std", ["sample", "population"])
def test_group_mean_std_host_matches_torch_bit_for_bit(monkeypatch: pytest.MonkeyPatch, std: str) -> None:
    cases = _cases(0, 400)
    fast = []
    for values, groups in cases:
        ids, n = advantages.dense_group_ids(groups)
        fast.append((ids, n, advantages.group_mean_std(values, ids, n, std)))
    _torch_only(monkeypatch)
    for (values, groups), (ids, n, got) in zip(cases, fast, strict=True):
        want_ids, want_n = advantages.dense_group_ids(groups)
        assert n == want_n and torch.equal(ids, want_ids)
        want = advantages.group_mean_std(values, want_ids, want_n, std)
        assert [_reprs(t) for t in got] == [_reprs(t) for t in want], (values, groups)


@pytest.mark.parametrize("py_rows", [_host.PY_ROWS, 0])  # Python floats, numpy
def test_dense_group_ids_fast_path_only_for_sorted_dense_labels(
    monkeypatch: pytest.MonkeyPatch, py_rows: int
) -> None:
    monkeypatch.setattr(_host, "PY_ROWS", py_rows)
    three = torch.tensor([0, 1, 2])
    assert _host.dense_group_ids(three) == (three, 3)
    assert _host.dense_group_ids(torch.tensor([0])) is not None
    assert _host.dense_group_ids(torch.tensor([0, 1, 1, 0])) is None  # back to an earlier label
    assert _host.dense_group_ids(torch.tensor([], dtype=torch.long)) is None
    ids = torch.tensor([0, 0, 1, 1, 2])
    assert _host.dense_group_ids(ids) == (ids, 3)
    assert _host.dense_group_ids(torch.tensor([0, 2, 2])) is None  # a gap: relabelled by torch.unique
    assert _host.dense_group_ids(torch.tensor([1, 1, 0, 0])) is None  # unsorted
    assert _host.dense_group_ids(torch.tensor([1, 1])) is None  # not starting at 0
    inverse, n = advantages.dense_group_ids(torch.tensor([5, 2, 5]))
    assert inverse.tolist() == [1, 0, 1] and n == 2


_HUGE = [*_SPECIAL, 1.7e308, -1.7e308, 5e-324]  # overflowing differences: ±inf advantages, clamped to ±max


@pytest.mark.parametrize("py_rows", [_host.PY_ROWS, 0])  # Python floats, numpy
def test_compute_advantages_host_matches_torch_bit_for_bit(
    monkeypatch: pytest.MonkeyPatch, py_rows: int
) -> None:
    monkeypatch.setattr(_host, "PY_ROWS", py_rows)
    rng = random.Random(1)
    cases = []
    for _ in range(300):
        size, prompts, funcs = rng.randint(1, 5), rng.randint(0, 5), rng.randint(1, 3)
        rows = size * prompts
        values = torch.tensor(
            [[rng.choice(_HUGE) if rng.random() < 0.4 else rng.gauss(0, 1) for _ in range(funcs)]
             for _ in range(rows)],
            dtype=torch.float64,
        ).reshape(rows, funcs)  # fmt: skip
        spec = GRPOSpec(
            num_generations=size,
            scale_rewards=rng.choice(["group", "batch", "none"]),
            std=rng.choice(["sample", "population"]),
            baseline=rng.choice(["mean", "rloo"]),
            multi_objective_aggregation=rng.choice(["sum_then_normalize", "normalize_then_sum"]),
        )
        groups = rng.choice([None, torch.arange(rows) // size, torch.randint(0, 3, (rows,))])
        weights = rng.choice([None, [rng.choice([0.5, 1.0, -2.0, 1 / 3]) for _ in range(funcs)]])
        cases.append((values, groups, spec, weights))
    fields = ("rewards", "advantages", "group_mean", "group_std", "scorable", "centered", "group_size")
    fast = [advantages.compute_advantages(v, g, s, reward_weights=w) for v, g, s, w in cases]
    taken = _host.group_advantages(cases[0][0], None, torch.zeros(cases[0][0].shape[0], dtype=torch.long), 1,
                                   "sample", "group", 1e-4)  # fmt: skip
    assert taken is not None  # the numpy path runs on these steps
    _torch_only(monkeypatch)
    for (values, groups, spec, weights), got in zip(cases, fast, strict=True):
        want = advantages.compute_advantages(values, groups, spec, reward_weights=weights)
        for field in fields:
            assert _reprs(getattr(got, field)) == _reprs(getattr(want, field)), (field, values, groups, spec)


@pytest.mark.parametrize("items", [0, 1, 7, 3.5, 1e-3, 123456789.0, 2.0**60 + 1, float("nan"), float("inf")])
def test_number_normaliser_matches_tensor_normaliser_bit_for_bit(items: float) -> None:
    from grpo_check.reference.loss import _items_normalizer

    for processes, accumulation, steps in ((1, 1, 1), (3, 7, 5), (8, 3, 2)):
        number = _items_normalizer(items, processes, accumulation, steps)
        tensor = _items_normalizer(
            torch.tensor(float(items), dtype=torch.float64), processes, accumulation, steps
        )
        assert number.dtype == tensor.dtype == torch.float64
        assert repr(number.item()) == repr(tensor.item()), (items, processes, accumulation, steps)


def _clip_case(rng: random.Random, *, some_float32: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A (rows, tokens) float64 ratio with clip bounds, NaN, ±inf and signed zeros among its values, and
    advantages with signed zeros and NaN, (rows,) or (rows, tokens); float32 half the time if
    ``some_float32``, else float64."""
    rows, tokens = rng.randint(0, 6), rng.choice([1, rng.randint(1, 7)])
    specials = [0.8, 1.2, 1.0, float("nan"), float("inf"), -float("inf"), 0.0, -0.0]
    ratio = torch.tensor(
        [[rng.choice(specials) if rng.random() < 0.3 else rng.uniform(0.5, 1.5) for _ in range(tokens)]
         for _ in range(rows)],
        dtype=torch.float64,
    ).reshape(rows, tokens)  # fmt: skip
    adv = torch.tensor([rng.choice([0.0, -0.0, 1.0, -1.0, float("nan")]) for _ in range(rows)])
    if not some_float32 or rng.random() < 0.5:
        adv = adv.double()
    if rng.random() < 0.3:
        adv = adv.unsqueeze(1).expand(rows, tokens).contiguous()
    return ratio, adv


def test_clip_masks_host_matches_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    from grpo_check.reference import ratio as ratio_module

    rng = random.Random(2)
    cases = []
    for _ in range(200):
        ratio, adv = _clip_case(rng, some_float32=True)  # float32 advantages are made float64 first
        cases.append((ratio, adv, rng.choice([0.2, 0.1]), rng.choice([0.2, 0.28])))
    fast = [ratio_module.clip_masks(*case) for case in cases]
    monkeypatch.setattr(ratio_module, "host_view", lambda tensor: None)
    for case, got in zip(cases, fast, strict=True):
        want = ratio_module.clip_masks(*case)
        assert [_reprs(t) for t in got] == [_reprs(t) for t in want], case


@pytest.mark.parametrize("py_rows", [_host.PY_ROWS, 0])  # Python floats, numpy
def test_unscorable_rows_host_match_torch(monkeypatch: pytest.MonkeyPatch, py_rows: int) -> None:
    """All-NaN rows are unscorable; rows whose sum is NaN without a NaN (+inf and −inf), rows with some NaN,
    and rows without reward functions give the torch code's answer."""
    nan, inf = float("nan"), float("inf")
    monkeypatch.setattr(_host, "PY_ROWS", py_rows)
    tables = [
        [[nan, nan], [inf, -inf], [1.0, nan], [0.5, 0.25], [nan, 2.0], [-inf, -inf], [nan, nan], [3.0, -1.0]],
        [[inf, -inf], [-inf, inf], [1.0, 2.0], [nan, nan]],
        [[], [], [], []],
    ]
    spec = GRPOSpec(num_generations=4)
    fields = ("rewards", "advantages", "group_mean", "group_std", "scorable", "group_size")
    fast = [advantages.compute_advantages(torch.tensor(t, dtype=torch.float64).reshape(len(t), -1), None, spec)
            for t in tables]  # fmt: skip
    assert [f.scorable.tolist() for f in fast[:2]] == [
        [False, True, True, True, True, True, False, True],
        [True, True, True, False],
    ]
    _torch_only(monkeypatch)
    for table, got in zip(tables, fast, strict=True):
        want = advantages.compute_advantages(
            torch.tensor(table, dtype=torch.float64).reshape(len(table), -1), None, spec
        )
        for field in fields:
            assert _reprs(getattr(got, field)) == _reprs(getattr(want, field)), (field, table)


def test_loss_clip_masks_on_the_given_advantages_match_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    from grpo_check.reference import loss as loss_module
    from grpo_check.reference import ratio as ratio_module

    rng = random.Random(3)
    cases = []
    for _ in range(200):
        ratio, adv = _clip_case(rng, some_float32=False)
        adv_2d = adv.unsqueeze(1) if adv.dim() == 1 else adv
        cases.append((ratio, adv, adv_2d, rng.choice([0.2, 0.1]), rng.choice([0.2, 0.28])))
    fast = [loss_module._clip_masks(*case) for case in cases]
    monkeypatch.setattr(ratio_module, "host_view", lambda tensor: None)
    for (ratio, _, adv_2d, low, high), got in zip(cases, fast, strict=True):
        want = ratio_module.clip_masks(ratio, adv_2d, low, high)  # the torch comparisons
        assert [_reprs(t) for t in got] == [_reprs(t) for t in want]
    monkeypatch.setattr(loss_module, "host_view", lambda tensor: None)  # no view: clip_masks decides
    for (ratio, adv, adv_2d, low, high), got in zip(cases, fast, strict=True):
        assert [_reprs(t) for t in loss_module._clip_masks(ratio, adv, adv_2d, low, high)] == [
            _reprs(t) for t in got
        ]


@pytest.mark.parametrize("delta", [None, 1.5])
def test_ratio_values_are_the_detached_ratio(delta: float | None) -> None:
    from grpo_check.reference.loss import per_token_loss

    spec = GRPOSpec(num_generations=2, loss_type="grpo", delta=delta)
    logps = torch.tensor([[-1.0, -2.0], [-0.5, -3.0]], dtype=torch.float64, requires_grad=True)
    old = torch.tensor([[-1.5, -2.0], [-0.5, -1.0]], dtype=torch.float64)
    out = per_token_loss(logps, old, torch.tensor([1.0, -1.0]), torch.ones(2, 2), spec)
    if delta is None:
        assert not out.ratio_values.requires_grad
        assert torch.equal(out.ratio_values, out.ratio.detach())
    else:  # the clip masks read the capped ratio: no view of ρ itself is made
        assert out.ratio_values is None
    assert out.ratio.requires_grad
