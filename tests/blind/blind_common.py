"""Building blocks of the blind set: tiny models, character tokenizers, datasets and rewards, built from code.

Each case file under ``tests/blind/`` is a trainer factory (``build_trainer(steps=2)``) a user could hand to
``grpo-check compare --trainer``. This module holds only what a user's project would hold beside its training
script: the model and tokenizer it trains, the data, the reward functions. The cases differ in the model
family (Llama, Qwen2, GPT-2, GPT-NeoX), the tokenizer (pad distinct from EOS, pad == EOS, several EOS ids),
the task and the GRPOConfig settings.
"""

from __future__ import annotations

import os
import random
import string
import tempfile
from typing import Any

UNK, PAD, EOS, EOT = "<unk>", "<pad>", "<eos>", "<eot>"


def char_tokenizer(alphabet: str, *, pad_is_eos: bool = False, second_eos: bool = False) -> Any:
    """A left-padding character-level tokenizer over ``alphabet`` (one token per character).

    ``second_eos`` adds ``<eot>``, which the model's generation config lists as a second EOS id."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = [UNK, EOS] if pad_is_eos else [PAD, UNK, EOS]
    if second_eos:
        specials.append(EOT)
    vocab = {tok: i for i, tok in enumerate([*specials, *alphabet])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token=UNK,
        eos_token=EOS,
        pad_token=EOS if pad_is_eos else PAD,
        additional_special_tokens=[EOT] if second_eos else None,
        padding_side="left",
        model_input_names=["input_ids", "attention_mask"],
    )


def tiny_model(family: str, tokenizer: Any, *, seed: int = 0, eos_ids: list[int] | None = None) -> Any:
    """A tiny causal LM of ``family`` (llama, qwen2, gpt2, gpt_neox), float32, dropout off, fixed weights."""
    import torch
    import transformers as tf

    vocab, pad, eos = len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id
    if family == "llama":
        config = tf.LlamaConfig(
            vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
            pad_token_id=pad, eos_token_id=eos, bos_token_id=None, tie_word_embeddings=True,
        )  # fmt: skip
        cls = tf.LlamaForCausalLM
    elif family == "qwen2":
        config = tf.Qwen2Config(
            vocab_size=vocab, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
            pad_token_id=pad, eos_token_id=eos, bos_token_id=None, tie_word_embeddings=False,
        )  # fmt: skip
        cls = tf.Qwen2ForCausalLM
    elif family == "gpt2":
        config = tf.GPT2Config(
            vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=128, resid_pdrop=0.0,
            embd_pdrop=0.0, attn_pdrop=0.0, pad_token_id=pad, eos_token_id=eos, bos_token_id=eos,
        )  # fmt: skip
        cls = tf.GPT2LMHeadModel
    elif family == "gpt_neox":
        config = tf.GPTNeoXConfig(
            vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=128, hidden_dropout=0.0, attention_dropout=0.0,
            pad_token_id=pad, eos_token_id=eos, bos_token_id=eos, tie_word_embeddings=False,
        )  # fmt: skip
        cls = tf.GPTNeoXForCausalLM
    else:
        raise ValueError(f"unknown model family {family!r}")
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = cls(config)
    finally:
        torch.random.set_rng_state(state)
    model.generation_config.pad_token_id = pad
    model.generation_config.eos_token_id = eos_ids if eos_ids else eos
    model.generation_config.bos_token_id = None
    return model


def saved_model(family: str, tokenizer: Any, *, seed: int = 0, eos_ids: list[int] | None = None) -> str:
    """Build the model and save it with its tokenizer in a fresh folder (TRL reloads the reference from it)."""
    path = os.path.join(tempfile.mkdtemp(prefix=f"blind-{family}-"), "policy")
    tiny_model(family, tokenizer, seed=seed, eos_ids=eos_ids).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def base_args(steps: int, **overrides: Any) -> Any:
    """A CPU, float32, quiet GRPOConfig for ``steps`` optimizer steps; ``overrides`` set the case's maths."""
    from trl import GRPOConfig

    settings: dict[str, Any] = {
        "output_dir": tempfile.mkdtemp(prefix="blind-out-"),
        "max_steps": steps,
        "per_device_train_batch_size": 8,
        "num_generations": 4,
        "max_completion_length": 6,
        "learning_rate": 5e-3,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": [],
        "use_cpu": True,
        "bf16": False,
        "seed": 0,
        "disable_tqdm": True,
    }
    settings.update(overrides)
    return GRPOConfig(**settings)


# --- tasks -------------------------------------------------------------------------------------------------


def sum_dataset(count: int = 48, *, seed: int = 1, terms: int | None = None) -> Any:
    """``add:3+4=`` style prompts (answer ``7``), one to three operands (``terms``: always that many, so every
    prompt has the same length and nothing is left-padded)."""
    from datasets import Dataset

    rng = random.Random(seed)
    prompts = []
    for _ in range(count):
        terms_here = terms or rng.randint(1, 3)
        terms_list = [str(rng.randint(0, 9)) for _ in range(terms_here)]
        prompts.append("add:" + "+".join(terms_list) + "=")
    return Dataset.from_dict({"prompt": prompts})


def sum_answer(prompt: str) -> str:
    body = prompt.partition(":")[2].rstrip("=")
    return str(sum(int(t) for t in body.split("+") if t))


def sum_reward(prompts: list[str], completions: list[str], **_: Any) -> list[float]:
    """1 for the right sum, partial credit per right leading character, 0.1 for any digit at all."""
    out = []
    for prompt, completion in zip(prompts, completions, strict=True):
        answer = sum_answer(prompt)
        hits = sum(1 for a, c in zip(answer, completion, strict=False) if a == c)
        out.append(hits / len(answer) + (0.1 if any(ch.isdigit() for ch in completion) else 0.0))
    return out


def brevity_reward(completions: list[str], **_: Any) -> list[float]:
    """Shorter completions score higher (a length-shaping term)."""
    return [1.0 / (1.0 + len(c)) for c in completions]


def word_dataset(count: int = 48, *, seed: int = 2, length: int | None = None) -> Any:
    """``up:abc=`` prompts (the answer is the word upper-cased), 1 to 5 letters (``length``: always that many,
    so nothing is left-padded)."""
    from datasets import Dataset

    rng = random.Random(seed)
    prompts = []
    for _ in range(count):
        word = "".join(rng.choice("abcdefgh") for _ in range(length or rng.randint(1, 5)))
        prompts.append(f"{rng.choice(('up', 'sw'))}:{word}=")
    return Dataset.from_dict(
        {"prompt": prompts, "answer": [p.split(":")[1].rstrip("=").upper() for p in prompts]}
    )


def case_reward(completions: list[str], answer: list[str], **_: Any) -> list[float]:
    """Fraction of the answer's letters matched at the same position (the dataset's ``answer`` column)."""
    out = []
    for completion, target in zip(completions, answer, strict=True):
        hits = sum(1 for a, c in zip(target, completion, strict=False) if a == c)
        out.append(hits / max(len(target), len(completion), 1))
    return out


def upper_reward(completions: list[str], **_: Any) -> list[float]:
    """Fraction of upper-case letters."""
    return [sum(ch.isupper() for ch in c) / max(len(c), 1) for c in completions]


def parity_dataset(count: int = 48, *, seed: int = 3) -> Any:
    """``par:1011=`` prompts: answer ``e``/``o`` for an even/odd number of ones."""
    from datasets import Dataset

    rng = random.Random(seed)
    prompts = [
        "par:" + "".join(rng.choice("01") for _ in range(rng.randint(2, 6))) + "=" for _ in range(count)
    ]
    return Dataset.from_dict({"prompt": prompts})


def parity_reward(prompts: list[str], completions: list[str], **_: Any) -> list[float]:
    out = []
    for prompt, completion in zip(prompts, completions, strict=True):
        answer = "e" if prompt.count("1") % 2 == 0 else "o"
        first = completion[:1]
        out.append(1.0 if first == answer else (0.3 if first in "eo" and first else 0.05 * len(completion)))
    return out


DIGITS_ALPHABET = string.digits + "ad:+="
WORD_ALPHABET = "abcdefghABCDEFGHupsw:="
PARITY_ALPHABET = "01eopar:= "
