"""Bug: the reward is scored on prompt + completion text, so an answer already in the prompt earns reward.

Tiny Qwen2, sum task, bnpo loss, beta 0.02, top_p 0.9."""

from __future__ import annotations

from typing import Any

from blind_common import DIGITS_ALPHABET, base_args, char_tokenizer, saved_model, sum_answer, sum_dataset
from trl import GRPOTrainer


def contains_answer(prompts: list[str], completions: list[str], **_: Any) -> list[float]:
    scores = []
    for prompt, completion in zip(prompts, completions, strict=True):
        text = prompt + completion  # BUG: the prompt's own digits can contain the answer
        answer = sum_answer(prompt)
        scores.append(1.0 if answer in text else 0.2 * sum(ch.isdigit() for ch in completion) / 6)
    return scores


def build_trainer(steps: int = 2) -> GRPOTrainer:
    tokenizer = char_tokenizer(DIGITS_ALPHABET)
    args = base_args(steps, loss_type="bnpo", beta=0.02, top_p=0.9)
    return GRPOTrainer(
        model=saved_model("qwen2", tokenizer, seed=5),
        reward_funcs=[contains_answer],
        args=args,
        train_dataset=sum_dataset(seed=7),
        processing_class=tokenizer,
    )
