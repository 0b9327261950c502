"""Bug: a log-prob helper override divides the logits by the temperature twice.

Tiny GPT-2 (absolute positions; prompts of one length, so nothing is left-padded), sum task, grpo loss, temperature 0.7, beta 0.04."""

from __future__ import annotations

from typing import Any

import torch
from blind_common import DIGITS_ALPHABET, base_args, char_tokenizer, saved_model, sum_dataset, sum_reward
from trl import GRPOTrainer


def scaled_log_softmax(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return torch.log_softmax(logits.float() / temperature, dim=-1)


class TwiceTempered(GRPOTrainer):
    def _get_per_token_logps_and_entropies(
        self,
        model,
        input_ids,
        attention_mask,
        logits_to_keep,
        batch_size=None,
        compute_entropy=False,
        **_: Any,
    ):
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
        logits = logits[:, -logits_to_keep:] / self.temperature
        logp = scaled_log_softmax(logits, self.temperature)  # BUG: the helper divides again
        ids = input_ids[:, -logits_to_keep:]
        token_logps = logp.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
        entropy = -(logp.exp() * logp).sum(-1) if compute_entropy else None
        return token_logps, entropy, None


def build_trainer(steps: int = 2) -> GRPOTrainer:
    tokenizer = char_tokenizer(DIGITS_ALPHABET)
    args = base_args(steps, loss_type="grpo", temperature=0.7, beta=0.04)
    return TwiceTempered(
        model=saved_model("gpt2", tokenizer, seed=1),
        reward_funcs=[sum_reward],
        args=args,
        train_dataset=sum_dataset(seed=4, terms=2),
        processing_class=tokenizer,
    )
