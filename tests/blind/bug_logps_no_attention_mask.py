"""Bug: the log-prob helper runs the model without the attention mask, so left padding is attended to.

Tiny Llama, word task (prompts of 5 to 9 characters: left padding), grpo loss, top_p 0.95."""

from __future__ import annotations

from typing import Any

import torch
from blind_common import WORD_ALPHABET, base_args, case_reward, char_tokenizer, saved_model, word_dataset
from trl import GRPOTrainer


class NoAttentionMask(GRPOTrainer):
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
        logits = model(input_ids).logits  # BUG: attention_mask not passed
        logits = logits[:, :-1][:, -logits_to_keep:].float() / self.temperature
        logp = torch.log_softmax(logits, dim=-1)
        token_logps = logp.gather(-1, input_ids[:, -logits_to_keep:].unsqueeze(-1)).squeeze(-1)
        entropy = -(logp.exp() * logp).sum(-1) if compute_entropy else None
        return token_logps, entropy, None


def build_trainer(steps: int = 2) -> GRPOTrainer:
    tokenizer = char_tokenizer(WORD_ALPHABET)
    args = base_args(steps, loss_type="grpo", top_p=0.95, temperature=0.8)
    return NoAttentionMask(
        model=saved_model("llama", tokenizer, seed=24),
        reward_funcs=[case_reward],
        args=args,
        train_dataset=word_dataset(seed=25),
        processing_class=tokenizer,
    )
