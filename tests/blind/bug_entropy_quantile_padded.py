"""Bug: the high-entropy token mask takes its quantile over every position, padding included.

Tiny Qwen2, parity task, loss_type dapo (TRL 1.16's default), top_entropy_quantile 0.4, GAS 2."""

from __future__ import annotations

import torch
from blind_common import (
    PARITY_ALPHABET,
    base_args,
    char_tokenizer,
    parity_dataset,
    parity_reward,
    saved_model,
)
from trl import GRPOTrainer


class PaddedEntropyQuantile(GRPOTrainer):
    def get_high_entropy_mask(
        self, entropies: torch.Tensor, mask: torch.Tensor, threshold: float
    ) -> torch.Tensor:
        cutoff = torch.quantile(
            entropies.detach().float().flatten(), threshold
        )  # BUG: padded positions count
        return (entropies >= cutoff) & mask.bool()


def build_trainer(steps: int = 2) -> GRPOTrainer:
    tokenizer = char_tokenizer(PARITY_ALPHABET)
    args = base_args(steps, top_entropy_quantile=0.4, gradient_accumulation_steps=2, max_completion_length=8)
    return PaddedEntropyQuantile(
        model=saved_model("qwen2", tokenizer, seed=6),
        reward_funcs=[parity_reward],
        args=args,
        train_dataset=parity_dataset(seed=8),
        processing_class=tokenizer,
    )
