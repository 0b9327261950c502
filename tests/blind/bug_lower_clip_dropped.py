"""Bug: a hand-written ``_compute_loss`` clips the ratio from above only (``clamp(max=1 + eps_high)``), so a
negative-advantage token whose ratio fell below 1 − eps_low keeps its gradient. Real two-step batches seldom
push a ratio that low: only the trainer's own loss code run on probe batches reaches the branch.

Tiny Qwen2, word task, loss_type dapo, epsilon 0.2 / epsilon_high 0.28, steps_per_generation 2, GAS 1."""

from __future__ import annotations

import torch
from blind_common import WORD_ALPHABET, base_args, case_reward, char_tokenizer, saved_model, word_dataset
from trl import GRPOTrainer


class UpperClipOnly(GRPOTrainer):
    def _compute_loss(self, model, inputs):
        ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        attn = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        mask = inputs["completion_mask"]
        logps, _, _ = self._get_per_token_logps_and_entropies(model, ids, attn, mask.size(1))
        old = inputs.get("old_per_token_logps")
        old = logps.detach() if old is None else old
        ratio = torch.exp(logps - old)
        adv = inputs["advantages"].unsqueeze(1)
        clipped = torch.clamp(ratio, max=1 + self.epsilon_high)  # BUG: the lower bound 1 - eps_low is gone
        per_token = -torch.min(ratio * adv, clipped * adv)
        normalizer = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
        normalizer = normalizer * self.current_gradient_accumulation_steps / self.args.steps_per_generation
        return (per_token * mask).sum() / normalizer


def build_trainer(steps: int = 2) -> GRPOTrainer:
    tokenizer = char_tokenizer(WORD_ALPHABET)
    args = base_args(steps, loss_type="dapo", epsilon_high=0.28, steps_per_generation=2, learning_rate=1e-4)
    return UpperClipOnly(
        model=saved_model("qwen2", tokenizer, seed=41),
        reward_funcs=[case_reward],
        args=args,
        train_dataset=word_dataset(seed=41),
        processing_class=tokenizer,
    )
