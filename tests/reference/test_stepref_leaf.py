"""The reference's ∂loss/∂logps leaf: an alias of the step's float64 log-probs, whatever tensor they are."""

from __future__ import annotations

import torch

from grpo_check._step_cache import step_cache
from grpo_check.compare.synthetic import make_step
from grpo_check.config import GRPOSpec
from grpo_check.stepref.inputs import reference_downstream


def _spec() -> GRPOSpec:
    return GRPOSpec(num_generations=4, loss_type="dapo", beta=0.04, max_completion_length=5)


def test_downstream_of_float64_inference_logps_matches_normal_ones() -> None:
    spec = _spec()
    step = make_step(spec, n_prompts=2, completion_length=5, vocab_size=30)
    want = reference_downstream(step, spec)
    with torch.inference_mode():
        frozen = step["logps"].double().clone()
    step.tensors["logps"] = frozen
    with step_cache(step):
        got = reference_downstream(step, spec)
    assert got is not None and want is not None
    for name in ("ratio", "per_token_loss", "loss", "logps_grad"):
        torch.testing.assert_close(got[name], want[name], rtol=0.0, atol=0.0)
    assert not got["logps_grad"].requires_grad


def test_downstream_leaves_the_shared_float64_logps_untouched() -> None:
    spec = _spec()
    step = make_step(spec, n_prompts=2, completion_length=5, vocab_size=30)
    step.tensors["logps"] = step["logps"].double()
    before = step["logps"].clone()
    with step_cache(step):
        down = reference_downstream(step, spec)
    assert down is not None
    assert torch.equal(step["logps"], before) and not step["logps"].requires_grad
    assert step["logps"].grad is None
    assert bool(down["logps_grad"].abs().sum() > 0)  # a gradient was taken, through the alias


def test_downstream_under_no_grad_matches_grad_mode() -> None:
    spec = _spec()
    step = make_step(spec, n_prompts=2, completion_length=5, vocab_size=30)
    want = reference_downstream(step, spec)
    assert torch.is_grad_enabled()
    with torch.no_grad():
        got = reference_downstream(step, spec)
        assert not torch.is_grad_enabled()  # the grad mode of the caller is restored
    assert got is not None and want is not None and got.keys() == want.keys()
    for name in want:
        assert repr(got[name].tolist()) == repr(want[name].tolist()), name
    assert bool(got["logps_grad"].abs().sum() > 0)
