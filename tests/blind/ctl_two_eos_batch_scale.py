"""Control: a second EOS id in the generation config, rewards scaled over the batch (declared), two rewards.

Tiny Llama with ``<eot>`` as a second end token, word task, loss_type dapo (the default), scale_rewards batch, top_p 0.8, temperature 1.2."""

from __future__ import annotations

from blind_common import (
    WORD_ALPHABET,
    base_args,
    case_reward,
    char_tokenizer,
    saved_model,
    upper_reward,
    word_dataset,
)
from trl import GRPOTrainer


def build_trainer(steps: int = 2) -> GRPOTrainer:
    tokenizer = char_tokenizer(WORD_ALPHABET, second_eos=True)
    eos_ids = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<eot>")]
    args = base_args(
        steps,
        scale_rewards="batch",
        top_p=0.8,
        temperature=1.2,
        reward_weights=[1.0, 0.25],
        max_completion_length=7,
    )
    return GRPOTrainer(
        model=saved_model("llama", tokenizer, seed=34, eos_ids=eos_ids),
        reward_funcs=[case_reward, upper_reward],
        args=args,
        train_dataset=word_dataset(seed=34),
        processing_class=tokenizer,
    )
