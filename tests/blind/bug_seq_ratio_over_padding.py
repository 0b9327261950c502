"""Bug: sequence-level importance ratio averaged over every position, padding included.

Tiny Llama, sum task, loss_type grpo, importance_sampling_level sequence (GSPO), steps_per_generation 2, GAS 1."""

from __future__ import annotations

import torch
from blind_common import DIGITS_ALPHABET, base_args, char_tokenizer, saved_model, sum_dataset, sum_reward
from trl import GRPOTrainer


class PaddedSequenceRatio(GRPOTrainer):
    def _compute_loss(self, model, inputs):
        ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        attn = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        mask = inputs["completion_mask"]
        logps, _, _ = self._get_per_token_logps_and_entropies(model, ids, attn, mask.size(1))
        old = inputs["old_per_token_logps"]
        seq_log_ratio = (logps - old).mean(-1, keepdim=True)  # BUG: mean over padded positions too
        ratio = torch.exp(seq_log_ratio)
        adv = inputs["advantages"].unsqueeze(1)
        clipped = torch.clamp(ratio, 1 - self.epsilon_low, 1 + self.epsilon_high)
        per_token = -torch.min(ratio * adv, clipped * adv)
        loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
        return loss / self.current_gradient_accumulation_steps


def build_trainer(steps: int = 2) -> GRPOTrainer:
    tokenizer = char_tokenizer(DIGITS_ALPHABET)
    args = base_args(
        steps, loss_type="grpo", importance_sampling_level="sequence", steps_per_generation=2, learning_rate=2e-2,
        max_completion_length=8,
    )  # fmt: skip
    return PaddedSequenceRatio(
        model=saved_model("llama", tokenizer, seed=17),
        reward_funcs=[sum_reward],
        args=args,
        train_dataset=sum_dataset(seed=18),
        processing_class=tokenizer,
    )
