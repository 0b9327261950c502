"""``close`` on the trainer's and the sampler's log-probs answers from the sampler metrics' record of the same
selection exactly what comparing the two tensors again answers."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from grpo_check._step_cache import bool_mask, f64, step_cache
from grpo_check.compare import distribution
from grpo_check.compare.synthetic import make_step
from grpo_check.config import GRPOSpec
from grpo_check.diagnose import _context
from grpo_check.trl.background import check_captured_step

_VALUES = [0.0, -0.0, -1.0, -1e-4, math.nan, math.inf, -math.inf, -1e308, 1e308, -0.5, -2.0, -2.02]
_TOLERANCES = ((1e-3, 1e-4), (0.0, 0.0), (2e-2, 2e-2), (1e-6, 1e-6), (math.inf, 0.0), (0.0, math.nan))


def _record_and_close(trainer, sampler, mask, *, recorded: bool) -> list[bool]:
    """``close(f64(trainer), f64(sampler), bool mask)`` at several tolerances, in a step cache where the sampler
    metrics ran first (``recorded``) or not."""
    with step_cache(), _context.shared_comparisons():
        if recorded:
            distribution.sampler_metrics(trainer, sampler, mask)
        got, want, selected = f64(trainer), f64(sampler), bool_mask(mask)
        return [
            _context.close(got, want, selected, rtol=rtol, atol=atol, negated=negated)
            for rtol, atol in _TOLERANCES
            for negated in (False, True)
        ]


@pytest.mark.filterwarnings("ignore:overflow encountered", "ignore:invalid value encountered")
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_close_from_the_sampler_record_equals_close_computed(
    seed: int, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    generator = torch.Generator().manual_seed(seed)
    pool = torch.tensor(_VALUES, dtype=torch.float64)
    answers = []
    for rows, tokens in ((3, 4), (1, 1), (0, 3), (2, 5)):
        for _ in range(25):
            pick = torch.randint(len(_VALUES), (2, rows, tokens), generator=generator)
            trainer = pool[pick[0]]
            near = trainer + 1e-3 * torch.rand(rows, tokens, generator=generator, dtype=torch.float64)
            sampler = torch.where(torch.rand(rows, tokens, generator=generator) < 0.7, near, pool[pick[1]])
            mask = (torch.rand(rows, tokens, generator=generator) > 0.3).long()
            trainer, sampler = trainer.to(dtype), sampler.to(dtype)
            fast = _record_and_close(trainer, sampler, mask, recorded=True)
            with monkeypatch.context() as patched:  # the record is never consulted: close compares afresh
                patched.setattr(_context, "cached", lambda key, compute: None)
                slow = _record_and_close(trainer, sampler, mask, recorded=True)
            assert fast == slow, (trainer, sampler, mask)
            assert fast == _record_and_close(trainer, sampler, mask, recorded=False)
            answers += fast
    assert any(answers) and not all(answers)


def test_close_answers_from_the_record_without_comparing_again(monkeypatch: pytest.MonkeyPatch) -> None:
    trainer = -torch.rand(4, 5, dtype=torch.float64)
    sampler = trainer + 0.01
    mask = torch.ones(4, 5, dtype=torch.long)
    mask[0, 3:] = 0

    def compared(*args: object) -> None:
        raise AssertionError("compared again")

    monkeypatch.setattr(_context, "_host_comparable", compared)
    monkeypatch.setattr(_context, "_comparable", compared)
    with step_cache(), _context.shared_comparisons():
        distribution.sampler_metrics(trainer, sampler, mask)
        got, want, selected = f64(trainer), f64(sampler), bool_mask(mask)
        assert _context.close(got, want, selected, rtol=2e-2, atol=2e-2)
        assert not _context.close(got, want, selected, rtol=1e-3, atol=1e-4)
        with pytest.raises(AssertionError, match="compared again"):  # another mask: no record
            _context.close(got, want, None, rtol=2e-2, atol=2e-2)


def _steps():
    for loss_type, beta in (("dapo", 0.04), ("grpo", 0.0)):
        spec = GRPOSpec(num_generations=4, loss_type=loss_type, beta=beta, max_completion_length=6)
        yield "correct", spec, make_step(spec, completion_length=6)
        for dtype in (torch.bfloat16, torch.float16, torch.float64):
            yield f"correct {dtype}", spec, make_step(spec, seed=2, dtype=dtype, completion_length=6)
        flipped = make_step(spec, seed=1, completion_length=6)
        flipped.tensors["sampler_logps"] = -flipped["old_logps"]  # the sampler's log-probs negated
        yield "sampler negated", spec, flipped
        drifted = make_step(spec, seed=3, completion_length=6)
        drifted.tensors["sampler_logps"] = drifted["sampler_logps"] - 0.3
        drifted.tensors["sampler_logps"][0, 1] = math.nan
        drifted.tensors["old_logps"][1, 2] = -math.inf
        yield "sampler drifted, non-finite", spec, drifted
        positive = make_step(spec, seed=4, completion_length=6)
        positive.tensors["logps"] = -positive["logps"]
        del positive.tensors["old_logps"]  # the trainer's logps against the sampler's
        yield "positive log-probs, no old_logps", spec, positive
        masked = make_step(spec, seed=5, completion_length=6)
        masked.tensors["completion_mask"] = torch.zeros_like(masked["completion_mask"])
        yield "nothing selected", spec, masked


def _check(step, spec) -> str:
    findings, _ = check_captured_step(
        step, spec, model=None, ref_model=None, tolerances=None, invariants=True
    )
    return repr([dataclasses.asdict(f) for f in findings])


def test_check_findings_equal_without_the_sampler_record(monkeypatch: pytest.MonkeyPatch) -> None:
    for label, spec, step in _steps():
        fast = _check(step, spec)
        with monkeypatch.context() as patched:  # recorded under a key close does not read: compared afresh
            patched.setattr(distribution, "AGREEMENT", "elsewhere")
            slow = _check(step, spec)
        assert fast == slow, label
        if label == "sampler negated":
            assert "diagnose.logps_sign" in fast


@pytest.mark.filterwarnings("ignore:overflow encountered", "ignore:invalid value encountered")
@pytest.mark.parametrize("seed", range(6))
def test_k1_is_the_mean_of_the_negated_differences(seed: int) -> None:
    """k1 = mean(−d) bit for bit, taken from the sum of d: cancelling sums (a zero's sign), zeros of either sign,
    overflowing and non-finite sums included."""
    generator = torch.Generator().manual_seed(seed)
    pool = torch.tensor([0.0, -0.0, 1.0, -1.0, 0.1, -0.1, 1e308, -1e308, 3e-17, -0.7], dtype=torch.float64)
    for tokens in (1, 2, 5, 9, 16, 37, 130):
        for _ in range(30):
            sampler = pool[torch.randint(len(pool), (1, tokens), generator=generator)]
            logps = pool[torch.randint(len(pool), (1, tokens), generator=generator)]
            if tokens % 2 == 0:  # d and −d in pairs: an exactly cancelling sum
                logps[0, tokens // 2 :] = sampler[0, tokens // 2 :] - (
                    logps[0, : tokens // 2] - sampler[0, : tokens // 2]
                )
            metrics = distribution.sampler_metrics(logps, sampler, torch.ones(1, tokens))
            d = np.array(metrics["values"], dtype=np.float64)
            assert repr(metrics["k1"]) == repr(float(np.add.reduce(-d)) / len(d))
            assert repr(metrics["mean_d"]) == repr(float(np.add.reduce(d)) / len(d))


@pytest.mark.filterwarnings("ignore:overflow encountered")
def test_ratios_outside_the_band_are_counted_whenever_any_can_be() -> None:
    """frac_ratio_outside equals the count of exp(d) outside [0.5, 2], |d| on either side of the 0.69 bound
    below which none is counted (ln 2 ± a few ulps, large and overflowing d included)."""
    ln2 = math.log(2.0)
    edges = [
        0.0,
        0.68,
        0.69,
        math.nextafter(0.69, 1.0),
        0.6931,
        ln2,
        math.nextafter(ln2, 0.0),
        0.7,
        5.0,
        800.0,
    ]
    generator = torch.Generator().manual_seed(0)
    for edge in edges:
        for sign in (1.0, -1.0):
            d = sign * edge * torch.rand(1, 12, generator=generator, dtype=torch.float64)
            d[0, 0] = sign * edge
            sampler = -torch.rand(1, 12, generator=generator, dtype=torch.float64)
            metrics = distribution.sampler_metrics(sampler + d, sampler, torch.ones(1, 12))
            ratio = np.exp(np.array(metrics["values"], dtype=np.float64))
            counted = int(np.count_nonzero((ratio < 0.5) | (ratio > 2.0)))
            assert repr(metrics["frac_ratio_outside"]) == repr(counted / 12), (edge, sign)


def test_the_record_is_read_under_the_key_it_is_written_under() -> None:
    assert _context._AGREEMENT == distribution.AGREEMENT
