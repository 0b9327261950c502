"""The reference's ∂loss/∂logps replayed in numpy: bit for bit autograd's, on correct and broken steps."""

from __future__ import annotations

import itertools

import pytest
import torch

import grpo_check.stepref._replayed_grad as replay
import grpo_check.stepref.inputs as inputs
from grpo_check._step_cache import step_cache
from grpo_check.compare.synthetic import make_step
from grpo_check.config import GRPOSpec
from grpo_check.stepref.inputs import reference_downstream

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo")


def _bits(tensor: torch.Tensor) -> list:
    """Values as their IEEE bit patterns, every NaN alike (torch's NaN payloads are not part of a finding)."""
    values = tensor.detach().double()
    as_int = values.view(torch.int64).clone()
    as_int[values.isnan()] = 0x7FF8000000000000
    return [tuple(values.shape), values.dtype, *as_int.flatten().tolist()]


def _downstream(step, spec, *, replayed: bool, monkeypatch: pytest.MonkeyPatch) -> dict[str, torch.Tensor]:
    """``reference_downstream`` by autograd, or with the gradient replayed: then unconditionally (no
    comparison with autograd on the first step) and asserted to have been."""
    used = []
    with monkeypatch.context() as patch:
        if replayed:
            patch.setattr(inputs, "trusted", lambda key, check: True)
            patch.setattr(inputs, "replayed_grad", lambda *a, **k: _kept(used, replay.replayed_grad(*a, **k)))
        else:
            patch.setattr(inputs, "replay_key", lambda spec: None)
        with step_cache(step):
            down = reference_downstream(step, spec)
    assert down is not None
    assert not replayed or (used and used[-1] is not None), "the replay did not run"
    return down


def _as_shipped(step, spec) -> dict[str, torch.Tensor]:
    with step_cache(step):
        down = reference_downstream(step, spec)
    assert down is not None
    return down


def _kept(store: list, value):
    store.append(value)
    return value


def _broken(step, seed: int) -> None:
    """Put NaN, ±inf, exact zeros and masked-out rows where a broken trainer would."""
    generator = torch.Generator().manual_seed(seed)
    specials = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e308, -1e-320])
    for name in ("logps", "old_logps", "ref_logps", "advantages"):
        tensor = step.tensors[name].clone()
        flat = tensor.view(-1)
        where = torch.randint(0, flat.numel(), (3,), generator=generator)
        flat[where] = specials[torch.randint(0, len(specials), (3,), generator=generator)].to(flat.dtype)
        step.tensors[name] = tensor
    mask = step.tensors["completion_mask"].clone()
    mask[int(torch.randint(0, mask.shape[0], (1,), generator=generator))] = 0
    step.tensors["completion_mask"] = mask


def _specs() -> list[GRPOSpec]:
    specs = []
    for loss_type, beta, bias_correction in itertools.product(LOSS_TYPES, (0.0, 0.04), (True, False)):
        specs.append(
            GRPOSpec(
                num_generations=4,
                loss_type=loss_type,
                beta=beta,
                use_bias_correction_kl=bias_correction,
                max_completion_length=5,
            )
        )
    return specs


@pytest.mark.parametrize(
    "spec", _specs(), ids=lambda s: f"{s.loss_type}-b{s.beta}-bc{s.use_bias_correction_kl}"
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_replayed_gradient_is_autograds_bit_for_bit(spec, dtype, monkeypatch) -> None:
    assert replay.replay_key(spec) is not None
    for seed, broken in itertools.product(range(4), (False, True)):
        step = make_step(spec, n_prompts=2, completion_length=5, vocab_size=30, seed=seed, dtype=dtype)
        step.meta["gradient_accumulation_steps"] = 1 + seed % 3
        if seed % 2:
            step.meta["num_items_in_batch"] = 17
        if broken:
            _broken(step, seed)
        want = _downstream(step, spec, replayed=False, monkeypatch=monkeypatch)
        got = _downstream(step, spec, replayed=True, monkeypatch=monkeypatch)
        assert got.keys() == want.keys()
        for name in want:
            assert _bits(got[name]) == _bits(want[name]), (spec.loss_type, seed, broken, name)
        assert not got["logps_grad"].requires_grad


def test_replay_takes_every_clip_branch_and_tie(monkeypatch) -> None:
    """Ratios exactly at, inside and beyond both clip bounds, with positive, negative and zero advantages."""
    spec = GRPOSpec(num_generations=4, loss_type="dapo", beta=0.04, epsilon=0.5, max_completion_length=4)
    step = make_step(spec, n_prompts=1, completion_length=4, vocab_size=30, dtype=torch.float64)
    log_ratios = torch.log(torch.tensor([[0.5, 1.5, 1.0, 0.25], [3.0, 0.5, 1.5, 1.0]], dtype=torch.float64))
    step.tensors["old_logps"] = step["logps"].double() - log_ratios.repeat(2, 1)
    step.tensors["advantages"] = torch.tensor([1.0, -1.0, 0.0, -0.0], dtype=torch.float64)
    want = _downstream(step, spec, replayed=False, monkeypatch=monkeypatch)
    got = _downstream(step, spec, replayed=True, monkeypatch=monkeypatch)
    assert _bits(got["logps_grad"]) == _bits(want["logps_grad"])
    assert bool((want["logps_grad"] == 0).any()) and bool((want["logps_grad"] != 0).any())


def test_a_replay_that_differs_from_autograd_is_not_used(monkeypatch) -> None:
    spec = GRPOSpec(num_generations=4, loss_type="dapo", beta=0.04, max_completion_length=5)
    step = make_step(spec, n_prompts=2, completion_length=5, vocab_size=30)
    want = _downstream(step, spec, replayed=False, monkeypatch=monkeypatch)
    original = replay.replayed_grad

    def off_by_an_ulp(*args, **kwargs):
        grad = original(*args, **kwargs)
        return None if grad is None else torch.nextafter(grad, torch.full_like(grad, float("inf")))

    monkeypatch.setattr(replay, "_TRUSTED", {})
    monkeypatch.setattr(inputs, "replayed_grad", off_by_an_ulp)
    got = _as_shipped(step, spec)
    assert _bits(got["logps_grad"]) == _bits(want["logps_grad"])
    assert {replay.replay_key(spec): False} == replay._TRUSTED
    again = _as_shipped(step, spec)  # remembered: autograd
    assert _bits(again["logps_grad"]) == _bits(want["logps_grad"])


def test_a_matching_replay_is_trusted_and_used(monkeypatch) -> None:
    spec = GRPOSpec(num_generations=4, loss_type="grpo", beta=0.0, max_completion_length=5)
    step = make_step(spec, n_prompts=2, completion_length=5, vocab_size=30)
    monkeypatch.setattr(replay, "_TRUSTED", {})
    calls = []
    original = replay.replayed_grad
    monkeypatch.setattr(inputs, "replayed_grad", lambda *a, **k: calls.append(1) or original(*a, **k))
    _as_shipped(step, spec)
    assert calls and {replay.replay_key(spec): True} == replay._TRUSTED


@pytest.mark.parametrize(
    "change",
    [
        {"loss_type": "cispo"},
        {"loss_type": "sapo"},
        {"importance_sampling_level": "sequence"},
        {"delta": 2.0},
        {"dual_clip": 3.0},
        {"off_policy_mask_threshold": 0.5},
        {"top_entropy_quantile": 0.5},
        {"entropy_coef": 0.01},
        {"sampler_is_correction": True},
        {"beta": 0.04, "kl_estimator": "k1"},
    ],
    ids=lambda change: "-".join(f"{k}={v}" for k, v in change.items()),
)
def test_objectives_outside_the_replay_take_autograd(change) -> None:
    spec = GRPOSpec(**{"num_generations": 4, "loss_type": "dapo", "max_completion_length": 5, **change})
    assert replay.replay_key(spec) is None


def test_a_mask_that_is_not_zero_one_takes_autograd_under_row_means(monkeypatch) -> None:
    """(N1)'s row lengths are exact sums only of a {0, 1} mask: another mask is left to autograd."""
    spec = GRPOSpec(num_generations=4, loss_type="grpo", beta=0.04, max_completion_length=5)
    step = make_step(spec, n_prompts=2, completion_length=5, vocab_size=30)
    step.tensors["completion_mask"] = step["completion_mask"].double() * 0.3
    want = _downstream(step, spec, replayed=False, monkeypatch=monkeypatch)
    with pytest.raises(AssertionError, match="the replay did not run"):
        _downstream(step, spec, replayed=True, monkeypatch=monkeypatch)
    got = _as_shipped(step, spec)
    assert _bits(got["logps_grad"]) == _bits(want["logps_grad"])


def test_a_step_too_large_for_numpy_views_takes_autograd(monkeypatch) -> None:
    import grpo_check._step_cache as step_cache_module

    spec = GRPOSpec(num_generations=4, loss_type="dapo", beta=0.04, max_completion_length=5)
    step = make_step(spec, n_prompts=2, completion_length=5, vocab_size=30)
    want = _downstream(step, spec, replayed=False, monkeypatch=monkeypatch)
    monkeypatch.setattr(step_cache_module, "HOST_ELEMENTS", 0)
    with pytest.raises(AssertionError, match="the replay did not run"):
        _downstream(step, spec, replayed=True, monkeypatch=monkeypatch)
    got = _as_shipped(step, spec)
    assert _bits(got["logps_grad"]) == _bits(want["logps_grad"])


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_a_step_without_rows_takes_autograd(loss_type, monkeypatch) -> None:
    spec = GRPOSpec(num_generations=4, loss_type=loss_type, beta=0.04, max_completion_length=5)
    step = make_step(spec, n_prompts=2, completion_length=5, vocab_size=30)
    for name, tensor in list(step.tensors.items()):
        if tensor.dim() and tensor.shape[0] == 8:
            step.tensors[name] = tensor[:0]
    want = _downstream(step, spec, replayed=False, monkeypatch=monkeypatch)
    got = _as_shipped(step, spec)
    assert _bits(got["logps_grad"]) == _bits(want["logps_grad"])
