"""Trainer factories for the re-derivation zoo cases, usable with ``grpo-check compare --trainer``.

Unlike the demo (a Llama over a digit vocabulary, one EOS), these build a tiny **Qwen2** policy over a
16-symbol arithmetic vocabulary whose tokenizer ends text with ``<|endoftext|>`` while the model's
``generation_config`` also stops at ``<|im_end|>`` (a list of two EOS ids, as chat models ship). With so few
symbols, an untrained policy samples either end often and often runs to ``max_completion_length`` without one,
so every batch holds completions ended by the tokenizer's EOS, by the secondary EOS, and truncated ones.
Rewards score the arithmetic expression the completion writes; the dataset is ``a+b=`` prompts.

Each ``build_*`` function returns an untrained ``GRPOTrainer`` (or a buggy subclass of it)::

    grpo-check compare --trainer grpo_check/zoo/rederive_factories.py:build_truncating_dapo --steps 2

Correct: ``build_truncating_dapo``, ``build_two_eos``, ``build_spg_below_gas``, ``build_unscorable_rows``.
Buggy: ``build_count_before_truncation_mask``, ``build_secondary_eos_ignored``, ``build_old_logps_skipped``,
``build_unscorable_scored_zero``.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

SYMBOLS = "0123456789+-*="
PAD, UNK, EOS, IM_END = "<pad>", "<unk>", "<|endoftext|>", "<|im_end|>"


def build_tokenizer() -> Any:
    """A character-level ``PreTrainedTokenizerFast`` over :data:`SYMBOLS` with two end tokens (left padding);
    the tokenizer's own ``eos_token`` is ``<|endoftext|>``."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate([PAD, UNK, EOS, IM_END, *SYMBOLS])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token=UNK,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[IM_END],
        padding_side="left",
    )


def save_policy(out_dir: str, *, seed: int = 1, hidden_size: int = 24) -> str:
    """A tiny ``Qwen2ForCausalLM`` (untied head, 2 layers) saved with its tokenizer; its generation config
    stops at both ``<|endoftext|>`` and ``<|im_end|>``."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = build_tokenizer()
    eos_ids = [tokenizer.convert_tokens_to_ids(IM_END), tokenizer.eos_token_id]
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=eos_ids,
        bos_token_id=None,
        tie_word_embeddings=False,
        attention_dropout=0.0,
    )
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    finally:
        torch.random.set_rng_state(state)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = eos_ids
    model.generation_config.bos_token_id = None
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def make_dataset(count: int = 32, *, seed: int = 3) -> Any:
    """``a+b=`` prompts (distinct, deterministic)."""
    import random

    from datasets import Dataset

    rng = random.Random(seed)
    prompts: list[str] = []
    while len(prompts) < count:
        prompt = f"{rng.randint(0, 99)}+{rng.randint(0, 99)}="
        if prompt not in prompts:
            prompts.append(prompt)
    return Dataset.from_dict({"prompt": prompts})


def sum_reward(prompts: list[str], completions: list[str], **_: Any) -> list[float]:
    """1 for the right sum, else a partial credit for the digits written (dense: groups vary)."""
    rewards = []
    for prompt, completion in zip(prompts, completions, strict=True):
        left, right = prompt.rstrip("=").split("+")
        answer = str(int(left) + int(right))
        if completion.strip() == answer:
            rewards.append(1.0)
        else:
            digits = sum(ch.isdigit() for ch in completion)
            rewards.append(0.1 * min(digits, len(answer)) - 0.05 * max(0, len(completion) - len(answer)))
    return rewards


def checked_sum_reward(prompts: list[str], completions: list[str], **_: Any) -> list[float | None]:
    """:func:`sum_reward`, but ``None`` (the verifier cannot score it) for a completion containing ``-``."""
    scores = sum_reward(prompts, completions)
    return [
        None if "-" in completion else score for completion, score in zip(completions, scores, strict=True)
    ]


def _config(workdir: str, steps: int, **overrides: Any) -> Any:
    from trl import GRPOConfig

    settings: dict[str, Any] = {
        "per_device_train_batch_size": 8,
        "num_generations": 4,
        "max_completion_length": 6,
        "gradient_accumulation_steps": 1,
        "learning_rate": 2e-2,
        "temperature": 1.0,
        "beta": 0.0,
        "loss_type": "dapo",
    }
    settings.update(overrides)
    return GRPOConfig(
        output_dir=f"{workdir}/out",
        max_steps=steps,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        bf16=False,
        seed=0,
        disable_tqdm=True,
        dataloader_num_workers=0,
        **settings,
    )


def _build(trainer_cls: Any, steps: int, *, reward: Any = sum_reward, **overrides: Any) -> Any:
    workdir = tempfile.mkdtemp(prefix="grpo-check-rederive-")
    model_path = save_policy(f"{workdir}/policy")
    return trainer_cls(
        model=model_path,
        reward_funcs=[reward],
        args=_config(workdir, steps, **overrides),
        train_dataset=make_dataset(48),
        processing_class=build_tokenizer(),
    )


def _trl() -> Any:
    from trl import GRPOTrainer

    return GRPOTrainer


# ----------------------------------------------------------------------------------------------- controls
def build_truncating_dapo(steps: int = 2) -> Any:
    """Correct: dapo (divides by N) with ``mask_truncated_completions``; many rows truncate at 6 tokens."""
    return _build(_trl(), steps, mask_truncated_completions=True)


def build_two_eos(steps: int = 2) -> Any:
    """Correct: completions end at either EOS id (tokenizer's and generation config's); grpo loss, T = 0.8."""
    return _build(_trl(), steps, loss_type="grpo", temperature=0.8, max_completion_length=8)


def build_spg_below_gas(steps: int = 2) -> Any:
    """Correct: steps_per_generation = 2 < GAS = 3 (not a multiple): generation batches straddle optimizer
    steps, so TRL computes old log-probs; bnpo loss."""
    return _build(
        _trl(),
        steps,
        loss_type="bnpo",
        per_device_train_batch_size=4,
        gradient_accumulation_steps=3,
        steps_per_generation=2,
    )


def build_unscorable_rows(steps: int = 2) -> Any:
    """Correct: the verifier returns None for completions containing ``-`` (unscorable rows in most groups);
    scale_rewards = "batch"."""
    return _build(_trl(), steps, reward=checked_sum_reward, loss_type="grpo", scale_rewards="batch")


# ----------------------------------------------------------------------------------------------- mutants
def count_before_truncation_mask_trainer() -> Any:
    """``num_items_in_batch`` counted from the completion mask before truncated rows are zeroed: the dapo
    normaliser includes tokens the loss never sees (a one-line reordering of TRL's own method)."""
    from trl import GRPOTrainer

    from grpo_check.zoo.mutants_trl import source_patched

    patched = source_patched(
        GRPOTrainer._generate_and_score_completions,
        [
            (
                "        if self.mask_truncated_completions:\n            eos_and_pad",
                "        num_items_unmasked = self.accelerator.gather(completion_mask.sum()).sum()\n"
                "        if self.mask_truncated_completions:\n            eos_and_pad",
            ),
            (
                "num_items_in_batch = self.accelerator.gather(loss_mask.sum()).sum()",
                "num_items_in_batch = num_items_unmasked",
            ),
        ],
    )
    return type("CountBeforeTruncationMask", (GRPOTrainer,), {"_generate_and_score_completions": patched})


def build_count_before_truncation_mask(steps: int = 2) -> Any:
    return _build(count_before_truncation_mask_trainer(), steps, mask_truncated_completions=True)


def secondary_eos_ignored_trainer() -> Any:
    """A fork that ends completions at the tokenizer's EOS only: generation still stops at ``<|im_end|>`` (the
    generation config's), but the completion mask runs on over the padding after it."""
    from trl import GRPOTrainer

    class SecondaryEosIgnored(GRPOTrainer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.eos_token_ids = [self.processing_class.eos_token_id]

    return SecondaryEosIgnored


def build_secondary_eos_ignored(steps: int = 2) -> Any:
    return _build(
        secondary_eos_ignored_trainer(), steps, loss_type="grpo", temperature=0.8, max_completion_length=8
    )


def old_logps_skipped_trainer() -> Any:
    """A fork that drops the old log-probs TRL computed (``old = logps.detach()`` in the loss) although the
    batch is trained on again after an optimizer step (num_iterations = 2): ρ ≡ 1, clipping never acts."""
    from trl import GRPOTrainer

    class OldLogpsSkipped(GRPOTrainer):
        def _generate_and_score_completions(self, *args: Any, **kwargs: Any) -> Any:
            output = super()._generate_and_score_completions(*args, **kwargs)
            output.pop("old_per_token_logps", None)
            return output

    return OldLogpsSkipped


def build_old_logps_skipped(steps: int = 2) -> Any:
    return _build(old_logps_skipped_trainer(), steps, loss_type="grpo", num_iterations=2)


def unscorable_scored_zero_trainer() -> Any:
    """Unscorable rows are not marked NaN before the group statistics: nansum scores them 0, they pull their
    group's mean and std and get an advantage of their own (the behaviour TRL PR #5773 fixed)."""
    from trl import GRPOTrainer

    from grpo_check.zoo.mutants_trl import source_patched

    patched = source_patched(
        GRPOTrainer._generate_and_score_completions,
        [
            (
                "            rewards[unscorable_mask] = torch.nan\n            mean_grouped_rewards",
                "            mean_grouped_rewards",
            )
        ],
    )
    return type("UnscorableScoredZero", (GRPOTrainer,), {"_generate_and_score_completions": patched})


def build_unscorable_scored_zero(steps: int = 2) -> Any:
    return _build(
        unscorable_scored_zero_trainer(),
        steps,
        reward=checked_sum_reward,
        loss_type="grpo",
        scale_rewards="batch",
    )
