"""Bug: a hand-written ``_compute_loss`` subtracts the KL penalty (rewards drifting from the reference).

Tiny Qwen2, word task, loss_type bnpo, beta 0.1, steps_per_generation 2 (ratios move on the second step)."""

from __future__ import annotations

import torch
from blind_common import WORD_ALPHABET, base_args, case_reward, char_tokenizer, saved_model, word_dataset
from trl import GRPOTrainer


class KLBonus(GRPOTrainer):
    def _compute_loss(self, model, inputs):
        ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        attn = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        mask = inputs["completion_mask"]
        logps, _, _ = self._get_per_token_logps_and_entropies(model, ids, attn, mask.size(1))
        old = inputs.get("old_per_token_logps")
        old = logps.detach() if old is None else old
        ratio = torch.exp(logps - old)
        adv = inputs["advantages"].unsqueeze(1)
        per_token = -torch.min(
            ratio * adv, torch.clamp(ratio, 1 - self.epsilon_low, 1 + self.epsilon_high) * adv
        )
        ref = inputs["ref_per_token_logps"]
        kl = (torch.exp(ref - logps) - (ref - logps) - 1) * (
            ratio if self.args.use_bias_correction_kl else 1.0
        )
        per_token = per_token - self.beta * kl  # BUG: the penalty is added with the wrong sign
        loss = (per_token * mask).sum() / mask.sum().clamp(min=1.0)
        return loss / self.current_gradient_accumulation_steps


def build_trainer(steps: int = 2) -> GRPOTrainer:
    tokenizer = char_tokenizer(WORD_ALPHABET)
    args = base_args(steps, loss_type="bnpo", beta=0.1, steps_per_generation=2, temperature=1.1)
    return KLBonus(
        model=saved_model("qwen2", tokenizer, seed=4),
        reward_funcs=[case_reward],
        args=args,
        train_dataset=word_dataset(seed=9),
        processing_class=tokenizer,
    )
