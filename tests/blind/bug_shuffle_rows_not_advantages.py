"""Bug: a ``_generate_and_score_completions`` override shuffles the batch rows after the advantages were
computed, and its list of keys to permute forgets ``advantages``.

Tiny GPT-2 (prompts of one length), word task, grpo loss, GAS 2, steps_per_generation 2."""

from __future__ import annotations

from typing import Any

import torch
from blind_common import WORD_ALPHABET, base_args, case_reward, char_tokenizer, saved_model, word_dataset
from trl import GRPOTrainer

ROW_KEYS = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "old_per_token_logps")


class ShuffledRows(GRPOTrainer):
    def _generate_and_score_completions(self, inputs: Any) -> Any:
        output = super()._generate_and_score_completions(inputs)
        order = torch.randperm(output["completion_ids"].size(0))
        for key in ROW_KEYS:  # BUG: "advantages" is not in ROW_KEYS, so rows and advantages part ways
            if output.get(key) is not None:
                output[key] = output[key][order]
        return output


def build_trainer(steps: int = 2) -> GRPOTrainer:
    tokenizer = char_tokenizer(WORD_ALPHABET)
    args = base_args(
        steps, loss_type="grpo", gradient_accumulation_steps=2, steps_per_generation=2, temperature=0.9
    )
    return ShuffledRows(
        model=saved_model("gpt2", tokenizer, seed=14),
        reward_funcs=[case_reward],
        args=args,
        train_dataset=word_dataset(seed=15, length=4),
        processing_class=tokenizer,
    )
