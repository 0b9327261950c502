"""The numpy fast paths for small CPU tensors give exactly what the torch paths give (same masks, same answers)."""

from __future__ import annotations

import dataclasses
import importlib
import math

import pytest
import torch

from grpo_check import _step_cache
from grpo_check._step_cache import host_view, step_cache
from grpo_check.compare import compare_step
from grpo_check.compare.synthetic import make_step
from grpo_check.config import GRPOSpec
from grpo_check.diagnose import _context
from grpo_check.stepref.inputs import decided_clip_branch


@pytest.fixture
def torch_only(monkeypatch: pytest.MonkeyPatch):
    """Every host_view says "evaluate with torch" (the path large or GPU tensors take)."""

    def no_view(tensor: torch.Tensor) -> None:
        return None

    def run(module, function, *args, **kwargs):
        monkeypatch.setattr(module, "host_view", no_view)
        try:
            return function(*args, **kwargs)
        finally:
            monkeypatch.undo()

    return run


def _ratios() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    ratio = 1.0 + 0.3 * torch.randn(6, 7, generator=generator, dtype=torch.float64)
    ratio[0, :4] = torch.tensor([0.8, 1.2, 0.8 * (1 + 1e-7), 1.2 * (1 - 1e-9)], dtype=torch.float64)
    ratio[1, :3] = torch.tensor([math.inf, -math.inf, math.nan], dtype=torch.float64)
    return ratio


def test_host_view_only_for_small_cpu_tensors_outside_a_graph() -> None:
    small = torch.ones(3, dtype=torch.float64)
    assert host_view(small) is not None and host_view(small).tolist() == [1.0, 1.0, 1.0]
    assert host_view(torch.ones(3, requires_grad=True)) is None
    assert host_view(torch.ones(_step_cache.HOST_ELEMENTS + 1)) is None
    assert host_view(torch.ones(3, dtype=torch.bfloat16)) is None  # no numpy dtype


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("epsilon_high", [0.2, 0.28])
def test_decided_clip_branch_numpy_equals_torch(torch_only, dtype: str, epsilon_high: float) -> None:
    import grpo_check.stepref.inputs as inputs

    spec = GRPOSpec(num_generations=2, epsilon=0.2, epsilon_high=epsilon_high)
    reference = {"ratio": _ratios()}
    with step_cache():
        fast = decided_clip_branch(reference, spec, dtype)
    with step_cache():
        slow = torch_only(inputs, decided_clip_branch, reference, spec, dtype)
    assert fast.dtype is torch.bool and torch.equal(fast, slow)
    assert not bool(fast[0, 0]) and not bool(fast[0, 2])  # on a bound, and within rounding of it: undecided
    assert bool(fast[1, :3].all())  # a NaN/Inf ratio is always compared


@pytest.mark.parametrize("negated", [False, True])
@pytest.mark.parametrize(("noise", "expected"), [(0.0, True), (1e-4, True), (1e-1, False)])
def test_close_numpy_equals_torch(torch_only, negated: bool, noise: float, expected: bool) -> None:
    generator = torch.Generator().manual_seed(1)
    want = torch.randn(4, 5, generator=generator, dtype=torch.float64)
    got = (-want if negated else want) + noise * torch.randn(4, 5, generator=generator, dtype=torch.float64)
    got[0, 0], want[1, 1] = math.inf, math.nan  # off the selection (not finite on both sides)
    mask = torch.ones(4, 5, dtype=torch.bool)
    mask[3] = False
    fast = _context._close(got, want, mask, rtol=1e-3, atol=1e-6, negated=negated)
    slow = torch_only(_context, _context._close, got, want, mask, rtol=1e-3, atol=1e-6, negated=negated)
    assert fast == slow == expected


_HOST_VIEW_USERS = (
    "grpo_check.compare.stage_findings",
    "grpo_check.diagnose._context",
    "grpo_check.diagnose.logps",
    "grpo_check.diagnose.nonfinite",
    "grpo_check.diagnose.objective",
    "grpo_check.stepref.inputs",
)


def _steps():
    for loss_type, beta in (("grpo", 0.04), ("dapo", 0.0)):
        spec = GRPOSpec(num_generations=4, loss_type=loss_type, beta=beta)
        yield "correct", spec, make_step(spec)
        yield "correct bf16", spec, make_step(spec, seed=2, dtype=torch.bfloat16)
        broken = make_step(spec, seed=1)
        broken.tensors["logps"] = -broken["logps"]  # positive log-probs
        broken.tensors["rewards_per_func"][0, 0] = math.nan  # an unscorable reward
        broken.tensors["logps_grad"] = torch.zeros_like(broken["logps_grad"])  # a detached gradient
        yield "broken", spec, broken


def test_compare_step_findings_equal_without_the_numpy_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    for label, spec, step in _steps():
        fast = [dataclasses.asdict(f) for f in compare_step(step, spec)]
        with monkeypatch.context() as patched:
            for module in _HOST_VIEW_USERS:
                patched.setattr(importlib.import_module(module), "host_view", lambda tensor: None)
            slow = [dataclasses.asdict(f) for f in compare_step(step, spec)]
        assert repr(fast) == repr(slow), label
        diagnoses = {f["check_id"] for f in fast if f["kind"] == "diagnosis"}
        if label == "broken":  # the numpy paths fire too
            assert {"diagnose.logps_sign", "diagnose.detached_grad"} <= diagnoses, diagnoses
        else:
            assert not diagnoses, (label, diagnoses)


@pytest.mark.parametrize(
    "mask",
    [
        torch.ones(8, dtype=torch.bool),
        torch.tensor([True] * 7 + [False]),
        torch.zeros(0, dtype=torch.bool),
        torch.ones(300, dtype=torch.bool),  # beyond the list path: numpy
        torch.ones(4, 3, dtype=torch.bool).index_fill_(1, torch.tensor([2]), False),  # 2-D: numpy
        torch.tensor([1.0, float("nan"), 0.0]),  # not bool: NaN is true, 0 is false, as torch's all()
    ],
)
def test_all_true_equals_torch_all(mask: torch.Tensor) -> None:
    from grpo_check.compare.stage_findings import _all_true

    assert _all_true(mask) is bool(mask.all())


def test_default_policy_tolerances_equal_the_computed_ones() -> None:
    """The default policy's memoised tolerances equal those worked out each time, and policies that are not
    the default one (overrides, other k or budgets, a negative zero budget) are not answered from the memo."""
    from grpo_check.compare.tolerances import QUANTITY_DEFAULTS, TolerancePolicy

    dtypes = (None, "float32", "float64", "bfloat16", "float16", "torch.bfloat16")
    policies = [
        TolerancePolicy(),
        TolerancePolicy(overrides={"ratio": (1e-3, 1e-4)}),
        TolerancePolicy(k=8.0),
        TolerancePolicy(outlier_fraction=-0.0),
        TolerancePolicy(low_precision_outlier_fraction=0.01),
        TolerancePolicy().with_overrides({"loss.value": (0.0, 0.0)}),
    ]
    for policy in policies:
        for quantity in (*QUANTITY_DEFAULTS, "other"):
            for dtype in dtypes:
                for _ in range(2):  # a miss, then a hit
                    got = policy.for_check(f"{quantity}.values", quantity, dtype)
                    want = policy._for_check(f"{quantity}.values", quantity, dtype)
                    assert repr(got) == repr(want), (policy, quantity, dtype)
    assert (
        repr(TolerancePolicy(outlier_fraction=-0.0).for_check("x", "ratio", "float32").outlier_fraction)
        == "-0.0"
    )
    assert TolerancePolicy(overrides={"ratio": (1e-3, 1e-4)}).for_check("x", "ratio", "float32").rtol == 1e-3


def test_bool_loss_mask_is_the_shared_completion_mask_only_where_equal() -> None:
    """The loss mask as bool: the step's shared bool completion mask where the loss mask is the completion
    mask's float64 copy; its own conversion otherwise (a tool mask, truncation); the same values either way."""
    import torch

    from grpo_check._step_cache import bool_mask, step_cache
    from grpo_check.compare.stage_findings import _bool_loss_mask
    from grpo_check.reference.loss import loss_mask
    from grpo_check.stepref.context import as_f64

    for dtype in (torch.int64, torch.bool, torch.float32, torch.float64):
        completion = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]]).to(dtype)
        tool = torch.tensor([[1, 0, 1], [1, 1, 1], [1, 1, 1]])
        truncated = torch.tensor([False, True, False])
        with step_cache():
            plain = loss_mask(as_f64(completion))
            shared = _bool_loss_mask(plain, completion)
            assert shared is bool_mask(completion)
            assert torch.equal(shared, plain.bool())
            for other in (
                loss_mask(as_f64(completion), tool),
                loss_mask(as_f64(completion), None, truncated, True),
            ):
                got = _bool_loss_mask(other, completion)
                assert got is not bool_mask(completion) and torch.equal(got, other.bool())
        assert torch.equal(_bool_loss_mask(plain, None), plain.bool())


def test_tolerance_dict_is_a_fresh_copy_of_the_fields() -> None:
    """A tolerance's dict (built once) is a new dict each call: what one finding's details hold cannot change
    another's; equality, hash and repr stay those of the fields."""
    import dataclasses

    from grpo_check.compare.tolerances import Tolerance

    tolerance = Tolerance(1e-5, 1e-6, 4.0, 0.001, "ratio @ bfloat16")
    first = tolerance.to_dict()
    assert first == dataclasses.asdict(tolerance)
    first["rtol"] = 1.0
    second = tolerance.to_dict()
    assert second is not first and second == dataclasses.asdict(tolerance)
    twin = Tolerance(1e-5, 1e-6, 4.0, 0.001, "ratio @ bfloat16")
    assert twin == tolerance and hash(twin) == hash(tolerance) and repr(twin) == repr(tolerance)
