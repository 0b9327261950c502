"""assert_*_close: silent on a correct output, firing (with GRPO coordinates and a cause) on a broken one."""

from __future__ import annotations

import pytest
import torch

from grpo_check.config import GRPOSpec
from grpo_check.findings import GRPOCheckError, InputError, Verdict
from grpo_check.testing import (
    assert_advantages_close,
    assert_grad_close,
    assert_kl_close,
    assert_logps_close,
    assert_loss_close,
    assert_ratio_close,
    make_batch,
)

SPEC = GRPOSpec(num_generations=4, loss_type="grpo", max_completion_length=6)


@pytest.fixture
def batch():
    return make_batch(spec=SPEC, num_prompts=2, num_generations=4, max_length=6, seed=1)


def _advantages(rewards: torch.Tensor, G: int, eps: float = 1e-4, std: str = "sample") -> torch.Tensor:
    grouped = rewards.view(-1, G)
    finite = ~torch.isnan(grouped)
    count = finite.sum(1, keepdim=True)
    mean = torch.nanmean(grouped, 1, keepdim=True)
    ss = torch.where(finite, (grouped - mean) ** 2, 0.0).sum(1, keepdim=True)
    dof = (count - 1) if std == "sample" else count
    adv = (grouped - mean) / ((ss / dof.clamp(min=1)).sqrt() + eps)
    adv = torch.where(count > 1, adv, 0.0)
    return torch.nan_to_num(adv, nan=0.0).view(-1)


def test_advantages_silent_on_correct(batch) -> None:
    assert_advantages_close(
        _advantages(batch.rewards, 4), rewards=batch.rewards, num_generations=4, spec=SPEC
    )
    assert_advantages_close(
        _advantages(batch.rewards, 4), rewards=batch.rewards, group_index=batch.group_index, spec=SPEC
    )


def test_advantages_fire_on_wrong_epsilon_with_cause(batch) -> None:
    with pytest.raises(GRPOCheckError) as info:
        assert_advantages_close(
            _advantages(batch.rewards, 4, eps=1e4), rewards=batch.rewards, num_generations=4
        )
    finding = info.value.finding
    assert finding.stage == "advantages"
    assert finding.where.prompt == 0 and finding.where.generation is not None
    assert "advantage epsilon far too large" in finding.likely_cause and "1e+04" in finding.likely_cause
    assert finding.catalog_id == "S2"
    assert "allowed" in str(info.value)


def test_population_std_is_a_convention_as_in_the_cli_and_passes_when_configured(batch) -> None:
    """Another std convention is a convention difference, not a failure: the CLI says so, and so does the
    assertion (bug-catalog 10)."""
    from grpo_check.compare import compare_step
    from grpo_check.trace.model import TraceStep

    population = _advantages(batch.rewards, 4, std="population")
    assert_advantages_close(population, rewards=batch.rewards, num_generations=4, spec=SPEC)
    step = TraceStep(
        tensors={
            "rewards_per_func": batch.rewards.unsqueeze(1),
            "group_index": torch.arange(batch.rewards.numel()) // 4,
            "advantages": population,
        }
    )
    (compared,) = [
        f for f in compare_step(step, SPEC.replace(num_generations=4)) if f.check_id == "advantages.values"
    ]
    assert compared.verdict is Verdict.CONVENTION and compared.catalog_id == "10"
    assert_advantages_close(
        population, rewards=batch.rewards, num_generations=4, spec=SPEC.replace(std="population")
    )
    with pytest.raises(GRPOCheckError, match="advantage epsilon"):  # a wrong epsilon is a failure
        assert_advantages_close(
            _advantages(batch.rewards, 4, eps=1e4), rewards=batch.rewards, num_generations=4, spec=SPEC
        )


def test_advantages_from_a_trace_step(batch) -> None:
    step = batch.to_trace_step(step=7)
    step.tensors["advantages"] = _advantages(batch.rewards, 4)
    assert_advantages_close(step, spec=SPEC)
    step.tensors["advantages"] = torch.zeros(batch.batch_size)
    with pytest.raises(GRPOCheckError) as info:
        assert_advantages_close(step, spec=SPEC)
    assert info.value.finding.where.step == 7


def test_advantages_need_rewards_and_groups() -> None:
    with pytest.raises(InputError):
        assert_advantages_close(torch.zeros(4))
    with pytest.raises(InputError):
        assert_advantages_close(torch.zeros(4), rewards=torch.zeros(4))


def _logps(
    logits: torch.Tensor, completion_ids: torch.Tensor, prompt_length: int, shift: bool = True
) -> torch.Tensor:
    T = completion_ids.shape[1]
    start = prompt_length - 1 if shift else prompt_length
    chosen = logits[:, start : start + T]
    return torch.log_softmax(chosen.float(), -1).gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)


def test_logps_silent_on_correct_and_fire_on_off_by_one(batch) -> None:
    P = batch.prompt_length
    kwargs = dict(logits=batch.logits, completion_ids=batch.completion_ids, prompt_length=P,
                  completion_mask=batch.completion_mask, group_index=batch.group_index)  # fmt: skip
    assert_logps_close(_logps(batch.logits, batch.completion_ids, P), **kwargs)
    with pytest.raises(GRPOCheckError) as info:
        assert_logps_close(_logps(batch.logits, batch.completion_ids, P, shift=False), **kwargs)
    assert "off-by-one shift" in info.value.finding.likely_cause
    assert info.value.finding.where.token is not None


def test_logps_fire_on_missing_temperature(batch) -> None:
    P = batch.prompt_length
    with pytest.raises(GRPOCheckError, match="the trainer scores at T=1"):
        assert_logps_close(_logps(batch.logits, batch.completion_ids, P), logits=batch.logits,
                           completion_ids=batch.completion_ids, prompt_length=P, temperature=0.7,
                           completion_mask=batch.completion_mask)  # fmt: skip


def test_ratio_silent_and_firing(batch) -> None:
    good = torch.exp(batch.logps - batch.old_logps)
    kwargs = dict(
        logps=batch.logps, old_logps=batch.old_logps, completion_mask=batch.completion_mask, spec=SPEC
    )
    assert_ratio_close(good, **kwargs)
    with pytest.raises(GRPOCheckError, match="importance ratio inverted"):
        assert_ratio_close(1.0 / good, **kwargs)


def test_kl_silent_and_firing_with_gradient(batch) -> None:
    logps = batch.logps.clone().requires_grad_(True)
    kl = torch.exp(batch.ref_logps - logps) - (batch.ref_logps - logps) - 1
    (grad,) = torch.autograd.grad((kl * batch.completion_mask).sum(), logps)
    kwargs = dict(logps=batch.logps, ref_logps=batch.ref_logps, completion_mask=batch.completion_mask)
    assert_kl_close(kl.detach(), grad=grad, estimator="k3", **kwargs)
    with pytest.raises(GRPOCheckError, match="estimator k1"):
        assert_kl_close((logps - batch.ref_logps).detach(), estimator="k3", **kwargs)
    with pytest.raises(GRPOCheckError, match="gradient"):
        assert_kl_close(
            kl.detach(), grad=torch.ones_like(grad) * batch.completion_mask, estimator="k3", **kwargs
        )


def _grpo_loss(logps, old_logps, advantages, mask, *, detach=False, token_mean=False):
    ratio = torch.exp(logps - old_logps)
    if detach:
        ratio = ratio.detach()
    adv = advantages.unsqueeze(1)
    per_token = -torch.min(ratio * adv, torch.clamp(ratio, 0.8, 1.2) * adv)
    if token_mean:
        return (per_token * mask).sum() / mask.sum()
    return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()


def test_loss_silent_and_firing(batch) -> None:
    kwargs = dict(logps=batch.logps, old_logps=batch.old_logps, advantages=batch.advantages,
                  completion_mask=batch.completion_mask, spec=SPEC)  # fmt: skip
    m = batch.completion_mask
    assert_loss_close(_grpo_loss(batch.logps, batch.old_logps, batch.advantages, m), **kwargs)
    with pytest.raises(GRPOCheckError) as info:
        assert_loss_close(
            _grpo_loss(batch.logps, batch.old_logps, batch.advantages, m, token_mean=True), **kwargs
        )
    assert "token_mean" in info.value.finding.likely_cause


def test_loss_aggregation_only(batch) -> None:
    m = batch.completion_mask
    ptl = batch.per_token_loss
    good = ((ptl * m).sum(-1) / m.sum(-1).clamp(min=1)).mean()
    assert_loss_close(good, per_token_loss=ptl, completion_mask=m, spec=SPEC)
    with pytest.raises(GRPOCheckError, match="mask is not applied"):
        assert_loss_close(ptl.mean(-1).mean(), per_token_loss=ptl, completion_mask=m, spec=SPEC)


def _grad(batch, **kwargs) -> torch.Tensor:
    logps = batch.logps.clone().requires_grad_(True)
    loss = _grpo_loss(logps, batch.old_logps, batch.advantages, batch.completion_mask, **kwargs)
    (grad,) = torch.autograd.grad(loss, logps, allow_unused=True)
    return torch.zeros_like(logps) if grad is None else grad


def test_grad_silent_and_firing(batch) -> None:
    kwargs = dict(logps=batch.logps, old_logps=batch.old_logps, advantages=batch.advantages,
                  completion_mask=batch.completion_mask, spec=SPEC, group_index=batch.group_index)  # fmt: skip
    assert_grad_close(_grad(batch), **kwargs)
    with pytest.raises(GRPOCheckError, match="detached"):
        assert_grad_close(torch.zeros_like(batch.logps), **kwargs)
    with pytest.raises(GRPOCheckError, match="loss sign flipped"):
        assert_grad_close(-_grad(batch), **kwargs)
    with pytest.raises(GRPOCheckError) as info:
        assert_grad_close(_grad(batch, token_mean=True), **kwargs)
    assert info.value.finding.stage == "grad"
    assert info.value.finding.where.token is not None


def test_grad_matches_the_reference_on_policy() -> None:
    """On policy (old_logps = logps) every ratio is 1; the gradient −A·w still flows."""
    batch = make_batch(spec=SPEC, seed=2)
    logps = batch.logps.clone().requires_grad_(True)
    loss = _grpo_loss(logps, batch.logps, batch.advantages, batch.completion_mask)
    (grad,) = torch.autograd.grad(loss, logps)
    assert_grad_close(grad, logps=batch.logps, old_logps=batch.logps, advantages=batch.advantages,
                      completion_mask=batch.completion_mask, spec=SPEC)  # fmt: skip
    assert bool((grad != 0).any())


def test_invariant_asserts_are_re_exported() -> None:
    import grpo_check.testing as testing

    assert callable(testing.assert_group_sum_zero)
    testing.assert_group_sum_zero(advantages=torch.tensor([0.5, -0.5]), group_index=torch.tensor([0, 0]))
    with pytest.raises(GRPOCheckError):
        testing.assert_group_sum_zero(advantages=torch.tensor([1.0, 0.5]), group_index=torch.tensor([0, 0]))


def test_grad_from_a_trace_step(batch) -> None:
    step = batch.to_trace_step(step=3)
    step.tensors["logps_grad"] = _grad(batch)
    assert_grad_close(step, spec=SPEC)
    step.tensors["logps_grad"] = -_grad(batch)
    with pytest.raises(GRPOCheckError) as info:
        assert_grad_close(step, spec=SPEC)
    assert info.value.finding.where.step == 3
    assert info.value.finding.where.prompt is not None  # group_index read from the step
