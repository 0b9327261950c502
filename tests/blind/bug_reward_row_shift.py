"""Bug: the reward function pairs each completion with the previous row's target (``i - 1``).

Tiny Llama, word case task with an ``answer`` column, grpo loss, GAS 2, temperature 0.9."""

from __future__ import annotations

from typing import Any

from blind_common import WORD_ALPHABET, base_args, char_tokenizer, saved_model, upper_reward, word_dataset
from trl import GRPOTrainer


def answer_reward(completions: list[str], answer: list[str], **_: Any) -> list[float]:
    scores = []
    for i in range(1, len(completions) + 1):  # 1-based loop over the rows
        target, completion = answer[i - 1], completions[i - 2]  # BUG: i - 2 is the previous row's completion
        hits = sum(1 for a, c in zip(target, completion, strict=False) if a == c)
        scores.append(hits / max(len(target), len(completion), 1))
    return scores


def build_trainer(steps: int = 2) -> GRPOTrainer:
    tokenizer = char_tokenizer(WORD_ALPHABET)
    args = base_args(
        steps, loss_type="grpo", temperature=0.9, gradient_accumulation_steps=2, steps_per_generation=2
    )
    return GRPOTrainer(
        model=saved_model("llama", tokenizer, seed=3),
        reward_funcs=[answer_reward, upper_reward],
        args=args,
        train_dataset=word_dataset(),
        processing_class=tokenizer,
    )
