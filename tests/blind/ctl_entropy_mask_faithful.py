"""Control: the high-entropy mask rewritten for one process, quantile over real completion tokens only.

Tiny Llama (pad == EOS), parity task, top_entropy_quantile 0.4, GAS 2, loss_type dapo."""

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


class LocalEntropyMask(GRPOTrainer):
    def get_high_entropy_mask(
        self, entropies: torch.Tensor, mask: torch.Tensor, threshold: float
    ) -> torch.Tensor:
        real = entropies[mask.bool()].float()
        if real.numel() == 0:
            return torch.zeros_like(entropies, dtype=torch.bool)
        cutoff = torch.quantile(real, threshold)
        return (entropies * mask >= cutoff) & mask.bool()


def build_trainer(steps: int = 2) -> GRPOTrainer:
    tokenizer = char_tokenizer(PARITY_ALPHABET, pad_is_eos=True)
    args = base_args(
        steps,
        top_entropy_quantile=0.4,
        gradient_accumulation_steps=2,
        loss_type="dapo",
        max_completion_length=8,
    )
    return LocalEntropyMask(
        model=saved_model("llama", tokenizer, seed=36),
        reward_funcs=[parity_reward],
        args=args,
        train_dataset=parity_dataset(seed=36),
        processing_class=tokenizer,
    )
