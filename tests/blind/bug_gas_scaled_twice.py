"""Bug: ``compute_loss`` divides by gradient_accumulation_steps although TRL's loss is already scaled.

Tiny GPT-NeoX, word task, loss_type grpo, GAS 4, steps_per_generation 4, beta 0.02."""

from __future__ import annotations

from blind_common import (
    WORD_ALPHABET,
    base_args,
    case_reward,
    char_tokenizer,
    saved_model,
    upper_reward,
    word_dataset,
)
from trl import GRPOTrainer


class AccumulationScaled(GRPOTrainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        return loss / self.args.gradient_accumulation_steps  # BUG: the loss was already scaled for GAS


def build_trainer(steps: int = 2) -> GRPOTrainer:
    tokenizer = char_tokenizer(WORD_ALPHABET)
    args = base_args(
        steps,
        loss_type="grpo",
        per_device_train_batch_size=4,
        gradient_accumulation_steps=4,
        steps_per_generation=4,
        beta=0.02,
    )
    return AccumulationScaled(
        model=saved_model("gpt_neox", tokenizer, seed=22),
        reward_funcs=[case_reward, upper_reward],
        args=args,
        train_dataset=word_dataset(seed=23),
        processing_class=tokenizer,
    )
