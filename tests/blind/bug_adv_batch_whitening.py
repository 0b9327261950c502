"""Bug: advantages re-whitened over the whole batch after TRL normalised them per group (scale_rewards="group").

Tiny GPT-NeoX, parity task, grpo loss, GAS 2, steps_per_generation 4."""

from __future__ import annotations

from typing import Any

from blind_common import (
    PARITY_ALPHABET,
    base_args,
    char_tokenizer,
    parity_dataset,
    parity_reward,
    saved_model,
)
from trl import GRPOTrainer


class WhitenedAdvantages(GRPOTrainer):
    def _generate_and_score_completions(self, inputs: Any) -> Any:
        output = super()._generate_and_score_completions(inputs)
        adv = output["advantages"]
        output["advantages"] = (adv - adv.mean()) / (adv.std() + 1e-6)  # BUG: batch whitening on top of group
        return output


def build_trainer(steps: int = 2) -> GRPOTrainer:
    tokenizer = char_tokenizer(PARITY_ALPHABET)
    args = base_args(
        steps, loss_type="grpo", scale_rewards="group", gradient_accumulation_steps=2, steps_per_generation=4
    )
    return WhitenedAdvantages(
        model=saved_model("gpt_neox", tokenizer, seed=2),
        reward_funcs=[parity_reward],
        args=args,
        train_dataset=parity_dataset(),
        processing_class=tokenizer,
    )
