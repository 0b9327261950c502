"""Control: a log-prob helper refactored by hand (plain forward, shift, temperature, log_softmax, gather).

Tiny GPT-NeoX, parity task, loss_type dapo (TRL 1.16's default), temperature 0.9, top_p 0.9, beta 0.02, GAS 2."""

from __future__ import annotations

from typing import Any

import torch
from blind_common import (
    PARITY_ALPHABET,
    base_args,
    char_tokenizer,
    parity_dataset,
    parity_reward,
    saved_model,
)
from trl import GRPOTrainer


class PlainForwardHelper(GRPOTrainer):
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
        batch_size = batch_size or input_ids.size(0)
        logps, entropies = [], []
        for start in range(0, input_ids.size(0), batch_size):
            ids, attn = input_ids[start : start + batch_size], attention_mask[start : start + batch_size]
            logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1]  # position t predicts t + 1
            logits = logits[:, -logits_to_keep:].float() / self.temperature
            logp = torch.log_softmax(logits, dim=-1)
            logps.append(logp.gather(-1, ids[:, -logits_to_keep:].unsqueeze(-1)).squeeze(-1))
            if compute_entropy:
                entropies.append(-(logp.exp() * logp).sum(-1))
        return torch.cat(logps), (torch.cat(entropies) if compute_entropy else None), None


def build_trainer(steps: int = 2) -> GRPOTrainer:
    tokenizer = char_tokenizer(PARITY_ALPHABET)
    args = base_args(steps, temperature=0.9, top_p=0.9, beta=0.02, gradient_accumulation_steps=2)
    return PlainForwardHelper(
        model=saved_model("gpt_neox", tokenizer, seed=31),
        reward_funcs=[parity_reward],
        args=args,
        train_dataset=parity_dataset(seed=31),
        processing_class=tokenizer,
    )
