"""Correct GRPO steps built with straightforward formulas, and helpers to break them.

The builder writes out the textbook maths directly (group mean/std via view(P, G), log_softmax + gather,
the clipped surrogate, k3, token-mean aggregation, autograd for ∂loss/∂logps) so the invariants are tested
against an independent construction, not against grpo_check.reference.
"""

from __future__ import annotations

import dataclasses

import torch

from grpo_check.config import GRPOSpec
from grpo_check.findings import Finding, Verdict
from grpo_check.trace.model import TraceStep

EOS = 2
PAD = 0
VOCAB = 13


@dataclasses.dataclass
class Built:
    step: TraceStep
    spec: GRPOSpec
    logits: torch.Tensor  # (B, T, V), the logits the policy log-probs come from


def completions(prompts: int, G: int, T: int, *, generator: torch.Generator, pad: int = PAD, eos: int = EOS):
    """(completion_ids, completion_mask): random tokens, EOS at a random length, some rows truncated."""
    rows = prompts * G
    ids = torch.randint(3, VOCAB, (rows, T), generator=generator)
    lengths = torch.randint(1, T + 1, (rows,), generator=generator)
    truncated = torch.rand(rows, generator=generator) < 0.25
    lengths = torch.where(truncated, torch.full_like(lengths, T), lengths)
    positions = torch.arange(T).expand(rows, T)
    ids = torch.where(positions == (lengths - 1).unsqueeze(1), torch.full_like(ids, eos), ids)
    ids = torch.where(
        truncated.unsqueeze(1) & (positions == T - 1),
        torch.randint(3, VOCAB, (rows, T), generator=generator),
        ids,
    )
    ids = torch.where(positions >= lengths.unsqueeze(1), torch.full_like(ids, pad), ids)
    mask = (positions < lengths.unsqueeze(1)).long()
    return ids, mask, truncated


def group_advantages(rewards: torch.Tensor, G: int, epsilon: float = 1e-4) -> torch.Tensor:
    """TRL's formula on prompt-major rows: (r − group mean) / (sample std + ε), NaN rows excluded, then 0."""
    grouped = rewards.view(-1, G)
    mean = torch.nanmean(grouped, dim=1, keepdim=True)
    valid = ~torch.isnan(grouped)
    count = valid.sum(1, keepdim=True)
    var = torch.where(valid, (grouped - mean) ** 2, 0.0).sum(1, keepdim=True) / (count - 1).clamp(min=1)
    std = var.sqrt()
    return torch.nan_to_num((grouped - mean) / (std + epsilon), nan=0.0).view(-1)


def build_step(
    *,
    prompts: int = 3,
    G: int = 4,
    T: int = 6,
    seed: int = 0,
    beta: float = 0.0,
    off_policy: bool = False,
    loss_type: str = "dapo",
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    step: int = 3,
    tool_tokens: bool = False,
) -> Built:
    """A fully consistent captured step (every stage), on-policy unless ``off_policy``."""
    generator = torch.Generator().manual_seed(seed)
    rows = prompts * G
    ids, mask, truncated = completions(prompts, G, T, generator=generator)
    group_index = torch.arange(prompts).repeat_interleave(G)
    rewards_per_func = torch.randint(0, 3, (rows, 2), generator=generator).float() / 2
    rewards_per_func[:G] = 0.5  # the first group is all-equal
    rewards = rewards_per_func.sum(1)
    advantages = group_advantages(rewards, G)

    logits = torch.randn(rows, T, VOCAB, generator=generator) * 2
    logps_value = logits.log_softmax(-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    logps = logps_value.clone().requires_grad_(True)

    def logps_of(other_logits: torch.Tensor) -> torch.Tensor:
        return other_logits.log_softmax(-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)

    if off_policy:  # the policy before one optimizer step: nearby logits
        old_logps = logps_of(logits + 0.4 * torch.randn(logits.shape, generator=generator))
    else:
        old_logps = logps_value.clone()
    ref_logps = logps_of(logits + 0.3 * torch.randn(logits.shape, generator=generator))
    entropies = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)

    eps_high = epsilon if epsilon_high is None else epsilon_high
    ratio = torch.exp(logps - old_logps)
    clipped_ratio = ratio.clamp(1 - epsilon, 1 + eps_high)
    adv = advantages.unsqueeze(1)
    per_token_loss = -torch.min(ratio * adv, clipped_ratio * adv)
    kl = torch.exp(ref_logps - logps) - (ref_logps - logps) - 1
    if beta:
        per_token_loss = per_token_loss + beta * kl
    loss_mask = mask.clone()
    tool_mask = None
    if tool_tokens:
        tool_mask = torch.ones_like(mask)
        tool_mask[:, 1:3] = 0  # positions 1-2 are tool output in every row
        loss_mask = mask * tool_mask
    normalizer = loss_mask.sum().clamp(min=1)
    loss = (per_token_loss * loss_mask).sum() / normalizer
    loss.backward()

    tensors = {
        "completion_ids": ids,
        "completion_mask": mask,
        "group_index": group_index,
        "truncated": truncated,
        "rewards_per_func": rewards_per_func,
        "rewards": rewards,
        "advantages": advantages,
        "logps": logps.detach(),
        "old_logps": old_logps,
        "ref_logps": ref_logps,
        "entropies": entropies,
        "ratio": ratio.detach(),
        "clipped_ratio": clipped_ratio.detach(),
        "is_low_clipped": (ratio < 1 - epsilon) & (adv < 0),
        "is_high_clipped": (ratio > 1 + eps_high) & (adv > 0),
        "kl": kl.detach(),
        "per_token_loss": per_token_loss.detach(),
        "loss": loss.detach(),
        "loss_normalizer": normalizer.float(),
        "logps_grad": logps.grad.clone(),
    }
    if tool_mask is not None:
        tensors["tool_mask"] = tool_mask
    text = [
        ("".join(chr(97 + int(t) % 26) for t, m in zip(r, mk, strict=True) if m and int(t) != EOS))
        for r, mk in zip(ids, mask, strict=True)
    ]
    meta = {
        "step": step,
        "micro_batch": 0,
        "rank": 0,
        "eos_token_ids": [EOS],
        "pad_token_id": PAD,
        "optimizer_steps_since_old_logps": 1 if off_policy else 0,
        "kl_estimator": "k3",
    }
    spec = GRPOSpec(
        num_generations=G,
        loss_type=loss_type,
        beta=beta,
        epsilon=epsilon,
        epsilon_high=epsilon_high,
        max_completion_length=T,
        use_bias_correction_kl=False,
    )
    return Built(TraceStep(tensors=tensors, completion_text=text, meta=meta), spec, logits)


def with_tensors(step: TraceStep, **tensors: torch.Tensor) -> TraceStep:
    """A copy of ``step`` with some tensors replaced (None removes)."""
    out = TraceStep(tensors=dict(step.tensors), completion_text=step.completion_text, meta=dict(step.meta))
    for name, value in tensors.items():
        if value is None:
            out.tensors.pop(name, None)
        else:
            out.tensors[name] = value
    return out


def loss_grad(logps_value: torch.Tensor, loss_fn) -> torch.Tensor:
    """∂loss/∂logps for ``loss_fn(logps) -> scalar`` by autograd."""
    leaf = logps_value.detach().clone().requires_grad_(True)
    (loss_fn(leaf) + 0.0 * leaf.sum()).backward()  # a fully detached objective yields a zero gradient
    return leaf.grad.clone()


def bad(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.verdict in (Verdict.FAIL, Verdict.WARN)]


def only(findings: list[Finding], check_id: str) -> Finding:
    matching = [f for f in findings if f.check_id == check_id]
    assert len(matching) == 1, matching
    return matching[0]
