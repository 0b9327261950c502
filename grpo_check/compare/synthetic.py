"""Correct synthetic steps built from the reference itself (for tests, docs and examples).

:func:`make_step` produces a :class:`TraceStep` whose every downstream tensor is what a correct float32
trainer would record for the given :class:`GRPOSpec`: rewards → advantages → ratio → KL → loss →
∂loss/∂logps, computed by the reference and rounded to ``dtype``. Perturb one tensor to mimic a bug.
:class:`TinyLM` is a deterministic two-layer toy language model (no download, no transformers) so that
log-probs can be recomputed by the reference's own forward pass.

Example::

    >>> from grpo_check.config import GRPOSpec
    >>> from grpo_check.compare.synthetic import make_step
    >>> step = make_step(GRPOSpec(num_generations=4), n_prompts=2)
    >>> tuple(step["logps"].shape), step["group_index"].tolist()
    ((8, 6), [0, 0, 0, 0, 1, 1, 1, 1])
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from grpo_check.config import GRPOSpec
from grpo_check.trace.model import Trace, TraceStep


class TinyLM(torch.nn.Module):
    """Embedding + position embedding + linear head; ``forward`` returns an object with ``.logits``."""

    def __init__(self, vocab_size: int = 13, hidden: int = 16, max_positions: int = 64, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.embed = torch.nn.Parameter(torch.randn(vocab_size, hidden, generator=generator))
        self.position = torch.nn.Parameter(0.3 * torch.randn(max_positions, hidden, generator=generator))
        self.head = torch.nn.Parameter(
            torch.randn(hidden, vocab_size, generator=generator) / hidden**0.5 * 2.0
        )

    @dataclasses.dataclass
    class Output:
        logits: torch.Tensor

    def forward(self, input_ids, attention_mask=None, position_ids=None, **_: Any):
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1]).expand_as(input_ids)
        hidden = self.embed[input_ids] + self.position[position_ids.clamp(min=0)]
        context = torch.cumsum(hidden, dim=1) / torch.arange(1, input_ids.shape[1] + 1).view(1, -1, 1)
        return TinyLM.Output(logits=torch.tanh(context) @ self.head)


def make_step(
    spec: GRPOSpec,
    *,
    n_prompts: int = 3,
    completion_length: int = 6,
    prompt_length: int = 3,
    vocab_size: int = 13,
    seed: int = 0,
    model: torch.nn.Module | None = None,
    dtype: torch.dtype = torch.float32,
    step_index: int = 1,
    off_policy: float = 0.3,
    sampler_noise: float = 1e-4,
) -> TraceStep:
    """A correct step for ``spec``: every recorded tensor is the reference's value, rounded to ``dtype``.

    ``off_policy`` is the scale of the noise between ``old_logps`` and ``logps`` (so ratios ≠ 1 and some
    tokens clip); ``sampler_noise`` the noise between ``sampler_logps`` and ``old_logps``.
    """
    from grpo_check.reference.advantages import compute_advantages
    from grpo_check.reference.logps import logps_from_model
    from grpo_check.stepref.inputs import reference_downstream

    g = torch.Generator().manual_seed(seed)
    group_size = spec.num_generations
    rows = n_prompts * group_size
    prompt_ids = torch.randint(1, vocab_size, (rows, prompt_length), generator=g)
    prompt_mask = torch.ones(rows, prompt_length, dtype=torch.long)
    completion_ids = torch.randint(1, vocab_size, (rows, completion_length), generator=g)
    lengths = torch.randint(2, completion_length + 1, (rows,), generator=g)
    lengths[0] = completion_length
    completion_mask = (torch.arange(completion_length).unsqueeze(0) < lengths.unsqueeze(1)).long()
    group_index = torch.arange(rows) // group_size
    rewards_per_func = torch.stack(
        [
            torch.randint(0, 2, (rows,), generator=g).double(),
            torch.rand(rows, generator=g, dtype=torch.float64),
        ],
        dim=1,
    )
    if model is not None:
        logps = logps_from_model(
            model, prompt_ids, prompt_mask, completion_ids, completion_mask, spec.temperature
        )
    else:
        logps = -(0.1 + 3.0 * torch.rand(rows, completion_length, generator=g, dtype=torch.float64))
    logps = logps.to(dtype).double()
    noise = off_policy * torch.randn(rows, completion_length, generator=g, dtype=torch.float64)
    old_logps = (logps - noise).clamp(max=-1e-3).to(dtype).double()
    ref_logps = (logps + 0.2 * torch.randn(rows, completion_length, generator=g, dtype=torch.float64)).clamp(
        max=-1e-3
    )
    ref_logps = ref_logps.to(dtype).double()
    sampler_logps = old_logps + sampler_noise * torch.randn(
        rows, completion_length, generator=g, dtype=torch.float64
    )
    adv = compute_advantages(rewards_per_func, group_index, spec)
    tensors: dict[str, torch.Tensor] = {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "group_index": group_index,
        "rewards_per_func": rewards_per_func.to(dtype),
        "rewards": adv.rewards.to(dtype),
        "advantages": adv.advantages.to(dtype),
        "logps": logps.to(dtype),
        "old_logps": old_logps.to(dtype),
        "ref_logps": ref_logps.to(dtype),
        "sampler_logps": sampler_logps.to(dtype),
    }
    meta = {
        "step": step_index,
        "micro_batch": 0,
        "rank": 0,
        "num_items_in_batch": int(completion_mask.sum()),
        "gradient_accumulation_steps": spec.gradient_accumulation_steps,
    }
    step = TraceStep(tensors=tensors, meta=meta)
    down = reference_downstream(step, spec)
    assert down is not None
    for name in ("ratio", "clipped_ratio", "kl", "per_token_loss", "loss", "logps_grad"):
        if name in down:
            tensors[name] = down[name].to(dtype)
    return step


def make_trace(
    spec: GRPOSpec | None = None, *, steps: int = 2, trainer: str = "synthetic", **kwargs: Any
) -> Trace:
    """A correct multi-step :class:`Trace` (see :func:`make_step`); the manifest carries ``spec``."""
    spec = spec or GRPOSpec(num_generations=4, loss_type="grpo", beta=0.04, max_completion_length=6)
    seed = kwargs.pop("seed", 0)
    return Trace(
        manifest={"trainer": trainer, "config": spec.to_dict(), "format_version": 1},
        steps=[make_step(spec, seed=seed + i, step_index=i + 1, **kwargs) for i in range(steps)],
    )
