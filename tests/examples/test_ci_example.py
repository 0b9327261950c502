"""Example: GRPO correctness tests next to your trainer code (the file shown in docs/ci.md).

Copy this file into your project's tests and replace ``compute_advantages`` and ``grpo_loss`` with imports of
your own. grpo-check's pytest plugin is loaded automatically once grpo-check is installed: it provides the
``grpo_*`` fixtures, the ``grpo`` marker and the ``--grpo-report=PATH`` option. This file is kept identical to
the code block in docs/ci.md.
"""

import pytest
import torch

from grpo_check import GRPOCheckError, GRPOSpec
from grpo_check.testing import assert_advantages_close, assert_grad_close, assert_matches_reference


def compute_advantages(rewards: torch.Tensor, num_generations: int) -> torch.Tensor:
    """Your trainer's advantages: rows of one prompt are contiguous; NaN = unscorable."""
    grouped = rewards.view(-1, num_generations)
    scorable = ~torch.isnan(grouped)
    count = scorable.sum(1, keepdim=True)
    # mean as lowest + Σ(r − lowest)/n: an all-equal group gets advantage exactly 0, not a float residue
    # that the division by σ + ε blows up (bug-catalog 9)
    lowest = torch.where(scorable, grouped, torch.inf).amin(1, keepdim=True).nan_to_num(0.0, posinf=0.0)
    mean = lowest + torch.where(scorable, grouped - lowest, 0.0).sum(1, keepdim=True) / count.clamp(min=1)
    var = torch.where(scorable, (grouped - mean) ** 2, 0.0).sum(1, keepdim=True) / (count - 1).clamp(min=1)
    advantages = (grouped - mean) / (var.sqrt() + 1e-4)
    advantages = torch.where(count > 1, advantages, 0.0)
    return torch.nan_to_num(advantages, nan=0.0).view(-1)


def grpo_loss(logps, old_logps, advantages, completion_mask, epsilon=0.2):
    """Your trainer's loss (TRL's "grpo": clipped surrogate, sequence mean of token means)."""
    ratio = torch.exp(logps - old_logps)
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + epsilon)
    advantages = advantages.unsqueeze(1)
    per_token = -torch.min(ratio * advantages, clipped * advantages)
    return ((per_token * completion_mask).sum(-1) / completion_mask.sum(-1).clamp(min=1)).mean()


SPEC = GRPOSpec(loss_type="grpo", epsilon=0.2, adv_epsilon=1e-4, std="sample")


@pytest.mark.grpo
def test_advantages_match_reference():
    assert_matches_reference(compute_advantages, stage="advantages", config=SPEC, max_examples=25)


@pytest.mark.grpo
def test_loss_and_gradient_match_reference():
    # the loss VALUE and ∂loss/∂logps (what the optimizer really sees) are both compared
    assert_matches_reference(grpo_loss, stage="loss", config=SPEC, max_examples=25)


@pytest.mark.grpo(loss_type="grpo", adv_epsilon=1e-4)  # marker kwargs configure the grpo_spec fixture
def test_advantage_probe(grpo_probe_advantages):
    rewards = grpo_probe_advantages.inputs()["rewards"]
    grpo_probe_advantages.check(compute_advantages(rewards, num_generations=4))


@pytest.mark.grpo
def test_clipping_probe(grpo_probe_clip):
    grpo_probe_clip.check_fn(grpo_loss)  # loss, and exactly zero gradient on the clipped tokens


@pytest.mark.grpo
def test_on_policy_probe(grpo_probe_on_policy):
    grpo_probe_on_policy.check_fn(grpo_loss)  # loss exactly 0, gradient must not be


@pytest.mark.grpo
def test_one_batch_from_the_trainer(grpo_batch):
    advantages = compute_advantages(grpo_batch.rewards, grpo_batch.num_generations)
    assert_advantages_close(
        advantages, rewards=grpo_batch.rewards, group_index=grpo_batch.group_index, spec=SPEC
    )

    logps = grpo_batch.logps.clone().requires_grad_(True)
    grpo_loss(logps, grpo_batch.old_logps, grpo_batch.advantages, grpo_batch.completion_mask).backward()
    assert_grad_close(
        logps.grad,
        logps=grpo_batch.logps,
        old_logps=grpo_batch.old_logps,
        advantages=grpo_batch.advantages,
        completion_mask=grpo_batch.completion_mask,
        spec=SPEC,
    )


def buggy_advantages(rewards, num_generations):
    grouped = rewards.view(num_generations, -1).T  # bug: repeat instead of repeat_interleave
    mean = torch.nanmean(grouped, dim=1, keepdim=True)
    advantages = (grouped - mean) / (grouped.std(dim=1, keepdim=True) + 1e4)  # bug: 1e4 for 1e-4
    return advantages.T.reshape(-1)


def test_a_buggy_function_is_caught():
    with pytest.raises(GRPOCheckError) as caught:
        assert_matches_reference(buggy_advantages, stage="advantages", config=SPEC, max_examples=25)
    message = str(caught.value)
    assert "stage 'advantages'" in message and "smallest failing batch" in message
    assert "B=2 rows = 1 prompt(s) x G=2" in message
    assert "advantage epsilon far too large" in caught.value.finding.likely_cause
