"""Bug: the log-prob helper skips the temperature for the frozen reference model, so the KL compares a
tempered policy with an untempered reference.

Tiny Qwen2 (pad == EOS), sum task, beta 0.05, temperature 0.6, loss_type dr_grpo."""

from __future__ import annotations

from typing import Any

import torch
from blind_common import DIGITS_ALPHABET, base_args, char_tokenizer, saved_model, sum_dataset, sum_reward
from trl import GRPOTrainer


class UntemperedReference(GRPOTrainer):
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
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        logits = logits[:, :-1][:, -logits_to_keep:].float()
        if model is not self.ref_model:  # BUG: "the reference is frozen, it needs no sampling temperature"
            logits = logits / self.temperature
        logp = torch.log_softmax(logits, dim=-1)
        token_logps = logp.gather(-1, input_ids[:, -logits_to_keep:].unsqueeze(-1)).squeeze(-1)
        entropy = -(logp.exp() * logp).sum(-1) if compute_entropy else None
        return token_logps, entropy, None


def build_trainer(steps: int = 2) -> GRPOTrainer:
    tokenizer = char_tokenizer(DIGITS_ALPHABET, pad_is_eos=True)
    args = base_args(steps, beta=0.05, temperature=0.6, loss_type="dr_grpo")
    return UntemperedReference(
        model=saved_model("qwen2", tokenizer, seed=19),
        reward_funcs=[sum_reward],
        args=args,
        train_dataset=sum_dataset(seed=20),
        processing_class=tokenizer,
    )
