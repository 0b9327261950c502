"""Bug: a hand-written ``_compute_loss`` clamps the advantages to [1 - eps, 1 + eps] instead of the ratio.

Tiny GPT-NeoX, sum task, loss_type grpo, num_iterations 2, epsilon 0.2."""

from __future__ import annotations

import torch
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


class ClippedAdvantages(GRPOTrainer):
    def _compute_loss(self, model, inputs):
        ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        attn = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        mask = inputs["completion_mask"]
        logps, _, _ = self._get_per_token_logps_and_entropies(model, ids, attn, mask.size(1))
        old = inputs.get("old_per_token_logps")
        old = logps.detach() if old is None else old
        ratio = torch.exp(logps - old)
        adv = inputs["advantages"].unsqueeze(1)
        clipped_adv = torch.clamp(adv, 1 - self.epsilon_low, 1 + self.epsilon_high)  # BUG: clamps A, not r
        per_token = -torch.min(ratio * adv, ratio * clipped_adv)
        loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
        return loss / self.current_gradient_accumulation_steps


def build_trainer(steps: int = 2) -> GRPOTrainer:
    tokenizer = char_tokenizer(DIGITS_ALPHABET)
    args = base_args(steps, loss_type="grpo", num_iterations=2, reward_weights=[1.0, 0.3])
    return ClippedAdvantages(
        model=saved_model("gpt_neox", tokenizer, seed=8),
        reward_funcs=[sum_reward, brevity_reward],
        args=args,
        train_dataset=sum_dataset(seed=21),
        processing_class=tokenizer,
    )
