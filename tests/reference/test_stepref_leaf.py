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


def _where_by_hand(group_index, ids, row, token, prompt=None):
    generation = token_id = None
    if row is not None and group_index is not None and row < group_index.numel():
        groups = group_index.reshape(-1).tolist()
        prompt, generation = groups[row], groups[:row].count(groups[row])
    known = row is not None and token is not None and ids is not None and ids.dim() == 2
    if known and row < ids.shape[0] and token < ids.shape[1]:
        token_id = int(ids[row, token])
    return prompt, generation, token_id


def test_step_context_where_reads_groups_and_token_ids(monkeypatch) -> None:
    from grpo_check.stepref import context

    ids = torch.arange(12).reshape(3, 4) + 100
    for as_list in (4096, 0):  # small ids read from a Python copy, large ones from the tensor
        monkeypatch.setattr(context, "_IDS_AS_LIST", as_list)
        for group_index in (torch.tensor([0, 0, 1]), torch.tensor([2, 0, 2]), None):
            for completion_ids in (ids, ids.reshape(-1), None):
                ctx = context.StepContext(step=3, group_index=group_index, completion_ids=completion_ids)
                for row in (None, 0, 1, 2, 3):
                    for token in (None, 0, 3, 4):
                        where = ctx.where(row=row, token=token, prompt=9)
                        want = _where_by_hand(group_index, completion_ids, row, token, prompt=9)
                        assert (where.prompt, where.generation, where.token_id) == want, (row, token)
                        assert (where.step, where.row, where.token) == (3, row, token)
        ctx = context.StepContext(group_index=torch.tensor([0, 1]), completion_ids=ids)
        assert ctx.where(row=1, token=1).token_id == 105
        ctx.completion_ids = ids * 2  # a new tensor: read afresh
        ctx.group_index = torch.tensor([4, 4])
        where = ctx.where(row=1, token=1)
        assert (where.token_id, where.prompt, where.generation) == (210, 4, 1)


def _downstream_reprs(step, spec) -> dict[str, str]:
    with step_cache(step):
        down = reference_downstream(step, spec)
    assert down is not None
    return {name: repr(value.tolist()) for name, value in down.items()}


def test_engine_entry_gradient_equals_autograd_grad(monkeypatch) -> None:
    """∂loss/∂logps through the engine entry point equals torch.autograd.grad's, bit for bit, for every loss
    type, on correct and broken (NaN, ±inf, bf16) log-probs."""
    import grpo_check.stepref.inputs as inputs

    monkeypatch.setattr(inputs, "replay_key", lambda spec: None)  # autograd for every objective

    for loss_type in ("grpo", "dapo", "dr_grpo", "bnpo", "cispo", "sapo", "luspo"):
        spec = GRPOSpec(num_generations=4, loss_type=loss_type, beta=0.04, max_completion_length=5)
        for broken in ("none", "nan", "inf", "bf16"):
            step = make_step(spec, n_prompts=2, completion_length=5, vocab_size=30)
            logps = step["logps"].clone()
            if broken == "nan":
                logps[1, 2] = float("nan")
            elif broken == "inf":
                logps[0, 0], logps[3, 4] = float("-inf"), float("inf")
            elif broken == "bf16":
                logps = logps.to(torch.bfloat16)
            step.tensors["logps"] = logps
            fast = _downstream_reprs(step, spec)
            with monkeypatch.context() as patch:
                patch.setattr(inputs, "_run_backward", None)  # the general path: torch.autograd.grad
                general = _downstream_reprs(step, spec)
            assert fast == general, (loss_type, broken)


def test_engine_entry_called_differently_falls_back_to_autograd_grad(monkeypatch) -> None:
    """A torch whose private engine entry point takes other arguments gets torch.autograd.grad's gradient,
    not an error."""
    import grpo_check.stepref.inputs as inputs

    monkeypatch.setattr(inputs, "replay_key", lambda spec: None)  # autograd for every objective

    spec = GRPOSpec(num_generations=4, loss_type="dapo", beta=0.04, max_completion_length=5)
    step = make_step(spec, n_prompts=2, completion_length=5, vocab_size=30)
    expected = _downstream_reprs(step, spec)
    calls: list[int] = []

    def other_signature(*args: object, **kwargs: object) -> None:
        calls.append(len(args))
        raise TypeError("_engine_run_backward() got an unexpected keyword argument 'accumulate_grad'")

    monkeypatch.setattr(inputs, "_run_backward", other_signature)
    assert _downstream_reprs(step, spec) == expected
    assert calls  # the entry point was tried
