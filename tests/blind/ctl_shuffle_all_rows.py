"""Control: ``_generate_and_score_completions`` shuffles every per-row tensor together (advantages included).

Tiny GPT-2 (prompts of one length), word task, loss_type bnpo, num_iterations 2, beta 0.02, GAS 2, steps_per_generation 2."""

from __future__ import annotations

from typing import Any

import torch
from blind_common import WORD_ALPHABET, base_args, case_reward, char_tokenizer, saved_model, word_dataset
from trl import GRPOTrainer


class ShuffledTogether(GRPOTrainer):
    def _generate_and_score_completions(self, inputs: Any) -> Any:
        output = super()._generate_and_score_completions(inputs)
        rows = output["completion_ids"].size(0)
        order = torch.randperm(rows)
        for key, value in output.items():
            if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.size(0) == rows:
                output[key] = value[order]
        return output


def build_trainer(steps: int = 2) -> GRPOTrainer:
    tokenizer = char_tokenizer(WORD_ALPHABET)
    args = base_args(
        steps,
        loss_type="bnpo",
        num_iterations=2,
        beta=0.02,
        gradient_accumulation_steps=2,
        steps_per_generation=2,
    )
    return ShuffledTogether(
        model=saved_model("gpt2", tokenizer, seed=33),
        reward_funcs=[case_reward],
        args=args,
        train_dataset=word_dataset(seed=33, length=4),
        processing_class=tokenizer,
    )
