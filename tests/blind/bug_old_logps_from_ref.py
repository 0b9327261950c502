"""Bug: a ``_generate_and_score_completions`` override hands the loss the reference model's log-probs as the
old log-probs ("the reference is the behaviour policy"), so once the policy has moved every ratio is
π/π_ref instead of π/π_old, on batches that are on-policy.

Tiny GPT-NeoX (pad == EOS), parity task, loss_type bnpo, beta 0.04, one generation per step."""

from __future__ import annotations

from typing import Any

from blind_common import (
    PARITY_ALPHABET,
    base_args,
    char_tokenizer,
    parity_dataset,
    parity_reward,
    saved_model,
)
from trl import GRPOTrainer


class ReferenceAsOld(GRPOTrainer):
    def _generate_and_score_completions(self, inputs: Any) -> Any:
        output = super()._generate_and_score_completions(inputs)
        if output.get("ref_per_token_logps") is not None:
            output["old_per_token_logps"] = output["ref_per_token_logps"]  # BUG: ref, not the sampling policy
        return output


def build_trainer(steps: int = 2) -> GRPOTrainer:
    tokenizer = char_tokenizer(PARITY_ALPHABET, pad_is_eos=True)
    args = base_args(steps, loss_type="bnpo", beta=0.04, learning_rate=2e-2)
    return ReferenceAsOld(
        model=saved_model("gpt_neox", tokenizer, seed=51),
        reward_funcs=[parity_reward],
        args=args,
        train_dataset=parity_dataset(seed=51),
        processing_class=tokenizer,
    )
