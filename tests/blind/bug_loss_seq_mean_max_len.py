"""Bug: a hand-written ``_compute_loss`` averages each sequence over the padded length, not its real length.

Tiny Llama (pad == EOS tokenizer), sum task, loss_type grpo, GAS 2, steps_per_generation 2, num_iterations 2."""

from __future__ import annotations

import torch
from blind_common import DIGITS_ALPHABET, base_args, char_tokenizer, saved_model, sum_dataset, sum_reward
from trl import GRPOTrainer


class PaddedMeanLoss(GRPOTrainer):
    def _compute_loss(self, model, inputs):
        ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        attn = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        mask = inputs["completion_mask"]
        logps, _, _ = self._get_per_token_logps_and_entropies(model, ids, attn, mask.size(1))
        old = inputs.get("old_per_token_logps")
        old = logps.detach() if old is None else old
        ratio = torch.exp(logps - old)
        adv = inputs["advantages"].unsqueeze(1)
        clipped = torch.clamp(ratio, 1 - self.epsilon_low, 1 + self.epsilon_high)
        per_token = -torch.min(ratio * adv, clipped * adv)
        per_seq = (per_token * mask).sum(-1) / mask.size(1)  # BUG: divides by the padded length T
        return per_seq.mean() / self.current_gradient_accumulation_steps


def build_trainer(steps: int = 2) -> GRPOTrainer:
    tokenizer = char_tokenizer(DIGITS_ALPHABET, pad_is_eos=True)
    args = base_args(
        steps, loss_type="grpo", gradient_accumulation_steps=2, steps_per_generation=2, num_iterations=2
    )
    return PaddedMeanLoss(
        model=saved_model("llama", tokenizer, seed=11),
        reward_funcs=[sum_reward],
        args=args,
        train_dataset=sum_dataset(seed=12),
        processing_class=tokenizer,
    )
