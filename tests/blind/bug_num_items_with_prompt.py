"""Bug: ``num_items_in_batch`` recomputed from the full attention mask, prompt tokens included (dapo normaliser).

Tiny Llama (pad == EOS), word task, loss_type dapo, GAS 2, steps_per_generation 2."""

from __future__ import annotations

from typing import Any

import torch
from blind_common import WORD_ALPHABET, base_args, case_reward, char_tokenizer, saved_model, word_dataset
from trl import GRPOTrainer


class TokenCountWithPrompt(GRPOTrainer):
    def _generate_and_score_completions(self, inputs: Any) -> Any:
        output = super()._generate_and_score_completions(inputs)
        attention = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)
        # BUG: counts the prompt tokens too (meant: the tokens the loss is averaged over)
        output["num_items_in_batch"] = self.accelerator.gather(attention.sum()).sum()
        return output


def build_trainer(steps: int = 2) -> GRPOTrainer:
    tokenizer = char_tokenizer(WORD_ALPHABET, pad_is_eos=True)
    args = base_args(steps, loss_type="dapo", gradient_accumulation_steps=2, steps_per_generation=2)
    return TokenCountWithPrompt(
        model=saved_model("llama", tokenizer, seed=13),
        reward_funcs=[case_reward],
        args=args,
        train_dataset=word_dataset(seed=5),
        processing_class=tokenizer,
    )
