"""Control: ``compute_loss`` wrapped to log the loss, returning TRL's value unchanged.

Tiny Qwen2 (pad == EOS), sum task, loss_type dr_grpo, GAS 3, steps_per_generation 3."""

from __future__ import annotations

from blind_common import (
    DIGITS_ALPHABET,
    base_args,
    brevity_reward,
    char_tokenizer,
    saved_model,
    sum_dataset,
    sum_reward,
)
from trl import GRPOTrainer


class LoggedLoss(GRPOTrainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        self._metrics["train"]["raw_loss"].append(float(loss.detach()))
        return loss


def build_trainer(steps: int = 2) -> GRPOTrainer:
    tokenizer = char_tokenizer(DIGITS_ALPHABET, pad_is_eos=True)
    args = base_args(
        steps, loss_type="dr_grpo", per_device_train_batch_size=4, gradient_accumulation_steps=3,
        steps_per_generation=3, num_generations=6, reward_weights=[1.0, 0.5],
    )  # fmt: skip
    return LoggedLoss(
        model=saved_model("qwen2", tokenizer, seed=32),
        reward_funcs=[sum_reward, brevity_reward],
        args=args,
        train_dataset=sum_dataset(seed=32),
        processing_class=tokenizer,
    )
