"""The shortcuts of the diagnoses and the reference on small steps answer exactly what the general paths answer."""

from __future__ import annotations

import dataclasses
import importlib
import math

import pytest
import torch

from grpo_check._step_cache import f64, step_cache
from grpo_check.compare.synthetic import make_step
from grpo_check.config import GRPOSpec
from grpo_check.diagnose import _context, nonfinite, objective
from grpo_check.stepref.context import as_f64
from grpo_check.trl.background import check_captured_step

# the modules of the reference, its inputs and the diagnoses that evaluate small tensors in numpy
_HOST_VIEW_USERS = (
    "grpo_check.reference._host",
    "grpo_check.reference.ratio",
    "grpo_check.stepref.inputs",
    "grpo_check.diagnose._context",
    "grpo_check.diagnose.logps",
    "grpo_check.diagnose.nonfinite",
    "grpo_check.diagnose.objective",
    "grpo_check.diagnose.loss_zero",
)


def _steps():
    for loss_type, beta in (("dapo", 0.04), ("grpo", 0.0), ("bnpo", 0.04)):
        spec = GRPOSpec(num_generations=4, loss_type=loss_type, beta=beta, max_completion_length=6)
        yield "correct", spec, make_step(spec, completion_length=6)
        for dtype in (torch.bfloat16, torch.float16, torch.float64):
            yield f"correct {dtype}", spec, make_step(spec, seed=2, dtype=dtype, completion_length=6)
        broken = make_step(spec, seed=1, completion_length=6)
        broken.tensors["logps"] = -broken["logps"]  # positive log-probs
        broken.tensors["rewards_per_func"][0, 0] = math.nan  # an unscorable reward
        broken.tensors["logps_grad"] = torch.zeros_like(broken["logps_grad"])  # a detached gradient
        yield "broken", spec, broken
        infinite = make_step(spec, seed=3, completion_length=6)
        infinite.tensors["logps"][1, 2] = -math.inf
        infinite.tensors["advantages"] = -infinite["advantages"]
        yield "infinite", spec, infinite


def _check(step, spec) -> str:
    findings, _ = check_captured_step(
        step, spec, model=None, ref_model=None, tolerances=None, invariants=True
    )
    return repr([dataclasses.asdict(f) for f in findings])


def test_check_findings_equal_without_the_numpy_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    for label, spec, step in _steps():
        fast = _check(step, spec)
        with monkeypatch.context() as patched:
            for module in _HOST_VIEW_USERS:
                patched.setattr(importlib.import_module(module), "host_view", lambda tensor: None)
            slow = _check(step, spec)
        assert fast == slow, label
        if label == "broken":  # the diagnoses speak on it
            assert "diagnose.detached_grad" in fast and "diagnose.logps_sign" in fast


@pytest.mark.parametrize(
    "values",
    [[0.0, -0.0], [0.0, math.nan], [0.0, 1e-300], [-2.0, 0.0], [math.inf], [], [[0.0, 0.0], [0.0, -1.0]]],
)
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64, torch.bfloat16])
def test_any_nonzero_and_all_clean_equal_their_torch_forms(values, dtype: torch.dtype) -> None:
    t = torch.tensor(values, dtype=dtype)
    assert objective._any_nonzero(t) == bool((t.abs() > 0).any())
    flat = t.reshape(-1)
    want = not bool(torch.isnan(t).any()) and bool(torch.isfinite(flat).all())
    assert nonfinite._all_clean(t, flat) == want


def test_as_f64_of_a_float64_tensor_is_what_f64_answers() -> None:
    plain64 = torch.tensor([1.0, math.nan], dtype=torch.float64)
    with step_cache():
        assert as_f64(plain64) is f64(plain64) is plain64
        single = torch.tensor([1.5, -0.0])
        assert as_f64(single) is f64(single) and as_f64(single).dtype == torch.float64
        graph = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
        assert not as_f64(graph).requires_grad  # detached, as f64 gives it


def test_diagnosis_copies_follow_a_replaced_tensor() -> None:
    spec = GRPOSpec(num_generations=4, loss_type="grpo")
    step = make_step(spec)
    dx = _context.Diagnosis(step=step, spec=spec, reference={}, findings=[], ctx=_context.StepContext())
    first = dx.trainer("logps")
    assert dx.trainer("logps") is first and torch.equal(first, step["logps"].double())
    step.tensors["logps"] = step["logps"] * 2
    assert torch.equal(dx.trainer("logps"), step["logps"].double())
    mask = dx.mask
    assert dx.mask is mask and mask.dtype == torch.bool
    step.tensors["completion_mask"] = torch.zeros_like(step["completion_mask"])
    assert not bool(dx.mask.any())
    assert dx.ref("logps") is None


def test_detectors_run_on_a_clean_step_follow_the_module_attributes(monkeypatch: pytest.MonkeyPatch) -> None:
    import grpo_check.diagnose as diagnose_module

    want = tuple(d for d in diagnose_module.DETECTORS if d not in diagnose_module.ON_FAILURE_ONLY)
    assert diagnose_module._speaking_alone() == want and want
    spec = GRPOSpec(num_generations=4, loss_type="grpo")
    positive = make_step(spec)
    positive.tensors["logps"] = -positive["logps"]
    assert "diagnose.logps_sign" in _check(positive, spec)

    def signs() -> list[str]:  # no compare finding fails: only the detectors that speak alone run
        findings = diagnose_module.diagnose(positive, {}, spec, [])
        return [f.check_id for f in findings if f.check_id == "diagnose.logps_sign"]

    assert signs() == ["diagnose.logps_sign"]
    # a detector marked as explaining failures only is skipped where nothing fails
    quiet = diagnose_module.ON_FAILURE_ONLY | {diagnose_module.logps.detect_sign_flip}
    monkeypatch.setattr(diagnose_module, "ON_FAILURE_ONLY", quiet)
    assert diagnose_module.logps.detect_sign_flip not in diagnose_module._speaking_alone()
    assert signs() == []


_CLOSE_VALUES = [0.0, -0.0, 1.0, -1.0, 1e-4, math.nan, math.inf, -math.inf, 1e308, -1e308, 0.5, 1.0001, -2.0]


@pytest.mark.parametrize("seed", range(4))
def test_close_on_numpy_views_answers_what_torch_answers(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    generator = torch.Generator().manual_seed(seed)
    cases = []
    for rows, tokens in ((3, 4), (1, 1), (0, 3), (2, 5)):
        for _ in range(40):
            pick = torch.randint(len(_CLOSE_VALUES), (2, rows, tokens), generator=generator)
            got = torch.tensor(_CLOSE_VALUES, dtype=torch.float64)[pick[0]]
            want = torch.tensor(_CLOSE_VALUES, dtype=torch.float64)[pick[1]]
            if seed % 2:  # mostly equal, so that some comparisons pass
                want = torch.where(torch.rand(rows, tokens, generator=generator) < 0.8, got, want)
            mask = torch.rand(rows, tokens, generator=generator) > 0.3
            for negated in (False, True):
                for rtol, atol in ((1e-3, 1e-4), (0.0, 0.0), (2e-2, 2e-2)):
                    for m in (mask, None):
                        cases.append((got, want, m, rtol, atol, negated))
    fast = [_context._close(g, w, m, rtol=r, atol=a, negated=n) for g, w, m, r, a, n in cases]
    assert any(fast) and not all(fast)
    monkeypatch.setattr(_context, "_host_comparable", lambda *args: None)  # the torch path
    slow = [_context._close(g, w, m, rtol=r, atol=a, negated=n) for g, w, m, r, a, n in cases]
    assert fast == slow


@pytest.mark.parametrize("seed", range(3))
def test_python_float_tests_equal_their_torch_forms_on_random_steps(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    pool = torch.tensor([0.0, -0.0, 1.0, -1.0, 1e308, -1e308, math.nan, math.inf, -math.inf, 2.5, 1e-300])
    for _ in range(300):
        rows, cols = (
            int(torch.randint(0, 5, (1,), generator=generator)),
            int(torch.randint(0, 4, (1,), generator=generator)),
        )
        for dtype in (torch.float16, torch.float32, torch.float64, torch.bfloat16):
            zeros = torch.rand((), generator=generator) < 0.5  # mostly clean tensors too
            pick = torch.randint(len(pool), (rows, cols), generator=generator)
            values = torch.where(
                torch.rand(rows, cols, generator=generator) < (0.9 if zeros else 0.2),
                0.0,
                pool.double()[pick],
            ).to(dtype)
            adv = values[:, 0] if cols else values.new_zeros(rows)
            assert objective._any_nonzero(values) == bool((values.abs() > 0).any())
            assert objective._any_nonzero(adv) == bool((adv.abs() > 0).any())
            want = not bool(torch.isnan(values).any()) and bool(torch.isfinite(adv).all())
            assert nonfinite._all_clean(values, adv) == want
            assert nonfinite._all_clean(adv, adv) == (
                not bool(torch.isnan(adv).any()) and bool(torch.isfinite(adv).all())
            )


def test_an_overflowing_sum_is_decided_element_by_element() -> None:
    big = torch.tensor([1e308, 1e308], dtype=torch.float64)  # finite values whose sum is +inf
    assert nonfinite._all_clean(big.unsqueeze(1), big) is True
    assert (
        nonfinite._all_clean(torch.tensor([[math.inf], [-math.inf]]), big) is True
    )  # inf − inf: no NaN reward
    assert nonfinite._all_clean(torch.tensor([[math.nan], [0.0]]), big) is False
    assert nonfinite._all_clean(big.unsqueeze(1), torch.tensor([0.0, math.inf])) is False


@pytest.mark.parametrize("seed", range(4))
def test_positive_share_on_numpy_views_answers_what_torch_answers(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The share of positive log-probs (numpy, with its shortcut when none is above 1e-6) equals the torch path's
    and the plain definition, with ±inf, NaN, ±0, values at 1e-6 and masked-out positives."""
    from grpo_check.diagnose import logps as logps_detectors

    generator = torch.Generator().manual_seed(seed)
    pool = torch.tensor(
        [-1.0, -0.0, 0.0, 1e-6, 2e-6, 0.5, math.inf, -math.inf, math.nan, -3.0], dtype=torch.float64
    )
    for rows, tokens in ((3, 4), (1, 1), (0, 3), (2, 5)):
        for _ in range(40):
            values = pool[torch.randint(len(pool), (rows, tokens), generator=generator)]
            if seed % 2:
                values = -values.abs()  # mostly no positive value: the shortcut
            mask = torch.rand(rows, tokens, generator=generator) > 0.3
            fast = logps_detectors._positive_share(values, mask)
            with monkeypatch.context() as patched:
                patched.setattr(logps_detectors, "host_view", lambda tensor: None)
                slow = logps_detectors._positive_share(values, mask)
            selected = mask & torch.isfinite(values)
            count = int(selected.sum())
            plain = int(((values > 1e-6) & selected).sum()) / count if count else 0.0
            assert repr(fast) == repr(slow) == repr(plain), (values, mask)


@pytest.mark.parametrize("seed", range(4))
def test_on_policy_test_on_numpy_views_answers_what_torch_answers(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whether some masked |logps − old_logps| exceeds 1e-6 (numpy) equals the torch path's answer, with ±inf,
    NaN, differences at 1e-6, empty selections and no mask."""
    from grpo_check.diagnose import loss_zero

    generator = torch.Generator().manual_seed(seed)
    pool = torch.tensor(
        [-1.0, -0.0, 0.0, -1e-6, -2e-6, math.inf, -math.inf, math.nan, -3.0], dtype=torch.float64
    )
    answers = []
    for rows, tokens in ((3, 4), (1, 1), (0, 3), (2, 5)):
        for _ in range(40):
            logps = pool[torch.randint(len(pool), (rows, tokens), generator=generator)]
            old = torch.where(torch.rand(rows, tokens, generator=generator) < 0.7, logps, pool[0])
            for mask in (torch.rand(rows, tokens, generator=generator) > 0.3, None):
                fast = loss_zero._moved(logps, old, mask)
                with monkeypatch.context() as patched:
                    patched.setattr(loss_zero, "host_view", lambda tensor: None)
                    slow = loss_zero._moved(logps, old, mask)
                assert fast == slow, (logps, old, mask)
                answers.append(fast)
    assert any(answers) and not all(answers)
