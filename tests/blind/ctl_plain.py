"""Control: an unmodified GRPOTrainer on a tiny Llama, sum task, dapo loss, beta > 0, temperature 0.8."""

from __future__ import annotations

from blind_common import DIGITS_ALPHABET, base_args, char_tokenizer, saved_model, sum_dataset, sum_reward
from trl import GRPOTrainer


def build_trainer(steps: int = 2) -> GRPOTrainer:
    tokenizer = char_tokenizer(DIGITS_ALPHABET)
    args = base_args(
        steps,
        loss_type="dapo",
        beta=0.04,
        temperature=0.8,
        gradient_accumulation_steps=2,
        steps_per_generation=2,
    )
    return GRPOTrainer(
        model=saved_model("llama", tokenizer),
        reward_funcs=[sum_reward],
        args=args,
        train_dataset=sum_dataset(),
        processing_class=tokenizer,
    )
