"""Control: a hand-written ``_compute_loss`` (token-level clipped surrogate, sequence mean, k3 KL), correct.

Tiny Qwen2, sum task, loss_type grpo, beta 0.04, steps_per_generation 2, GAS 1 (old log-probs computed)."""

from __future__ import annotations

import torch
from blind_common import DIGITS_ALPHABET, base_args, char_tokenizer, saved_model, sum_dataset, sum_reward
from trl import GRPOTrainer


class HandWrittenLoss(GRPOTrainer):
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
        ref = inputs["ref_per_token_logps"]
        kl = torch.exp(ref - logps) - (ref - logps) - 1
        if self.args.use_bias_correction_kl:  # the importance-sampling correction of the KL (on by default)
            kl = kl * ratio
        per_token = per_token + self.beta * kl
        loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
        return loss / self.current_gradient_accumulation_steps


def build_trainer(steps: int = 2) -> GRPOTrainer:
    tokenizer = char_tokenizer(DIGITS_ALPHABET)
    args = base_args(steps, loss_type="grpo", beta=0.04, steps_per_generation=2, learning_rate=1e-2)
    return HandWrittenLoss(
        model=saved_model("qwen2", tokenizer, seed=35),
        reward_funcs=[sum_reward],
        args=args,
        train_dataset=sum_dataset(seed=35),
        processing_class=tokenizer,
    )
