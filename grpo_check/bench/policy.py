"""A policy of a size people train, and a tokenizer to match, built from code (nothing is downloaded).

The demo's policy (2 layers, hidden size 32, 43 tokens) is so small that a TRL step is mostly Python and
Hugging Face call overhead. ``grpo-check bench --only overhead-realistic`` measures the cost of checking on
this one instead: a Llama with hidden size 512, 8 layers, an MLP of 1,376 and a vocabulary of 32,000 tokens
(41.7M parameters, the input and output embeddings tied), random weights from a seed, on the demo's task and
configuration.

The tokenizer is a BPE over the demo's characters whose merges build every two-character string, then
three-character strings (and longer, for larger vocabularies) in order until the vocabulary holds
``vocab_size`` entries; a token has a merge for each way of cutting it into two tokens. The task's prompts (``rev:3141=``) really are merged into multi-character tokens, a
sampled id decodes to up to three or four characters, as with a real tokenizer, and text over the demo's
characters round-trips exactly.

Example::

    >>> tok = build_tokenizer(vocab_size=2_000)
    >>> len(tok)
    2000
    >>> ids = tok("rev:3141=")["input_ids"]
    >>> tok.decode(ids), len(ids) < len("rev:3141=")
    ('rev:3141=', True)
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from typing import Any

from grpo_check.demo.model import CHARS, EOS, PAD, UNK, policy_config_fields, seeded_model

VOCAB_SIZE = 32_000
HIDDEN_SIZE = 512
NUM_LAYERS = 8
INTERMEDIATE_SIZE = 1_376  # as a Llama's: about 8/3 of the hidden size, rounded to a multiple of 32
NUM_HEADS = 8
NUM_KV_HEADS = 8


def _merged_tokens(alphabet: str) -> Iterator[str]:
    """Every string of two characters of ``alphabet``, then every string of three, ... in order: each one's
    prefixes come before it, so the merge (all but the last character, the last character) is always
    defined."""
    for length in itertools.count(2):
        for chars in itertools.product(alphabet, repeat=length):
            yield "".join(chars)


def build_tokenizer(*, vocab_size: int = VOCAB_SIZE) -> Any:
    """A BPE ``PreTrainedTokenizerFast`` of exactly ``vocab_size`` entries (special tokens included) over the
    demo's characters, left padding, no ``token_type_ids``."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    specials = [PAD, UNK, EOS]
    singles = [*specials, *CHARS]
    if vocab_size < len(singles):
        raise ValueError(
            f"vocab_size must be at least {len(singles)} (specials and characters), got {vocab_size}"
        )
    vocab = {token: index for index, token in enumerate(singles)}
    merges: list[tuple[str, str]] = []
    for token in itertools.islice(_merged_tokens(CHARS), vocab_size - len(singles)):
        vocab[token] = len(vocab)
    for token in itertools.islice(vocab, len(singles), None):
        # every split whose two parts are tokens: the token is reached whichever pair BPE merges first
        merges.extend((token[:cut], token[cut:]) for cut in range(1, len(token)) if token[cut:] in vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=UNK))
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token=UNK,
        eos_token=EOS,
        pad_token=PAD,
        padding_side="left",
        model_input_names=[
            "input_ids",
            "attention_mask",
        ],  # as a causal LM's: no token_type_ids for generate()
    )


def build_policy(
    tokenizer: Any,
    *,
    seed: int = 0,
    hidden_size: int = HIDDEN_SIZE,
    num_layers: int = NUM_LAYERS,
    intermediate_size: int = INTERMEDIATE_SIZE,
    num_heads: int = NUM_HEADS,
    num_kv_heads: int = NUM_KV_HEADS,
) -> Any:
    """A ``LlamaForCausalLM`` over ``tokenizer``'s vocabulary with deterministic random weights (``seed``),
    dropout off, float32, input and output embeddings tied."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=512,
        **policy_config_fields(tokenizer),
    )
    return seeded_model(LlamaForCausalLM, config, tokenizer, seed=seed)


def parameter_count(model: Any) -> int:
    """Distinct parameters (a tied embedding counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def save_policy(out_dir: str | os.PathLike[str], *, seed: int = 0) -> str:
    """Build the policy and its tokenizer and save both under ``out_dir`` (TRL reloads the reference model
    from this path when ``beta > 0``). Returns the path as a string."""
    from transformers.utils import logging as hf_logging

    tokenizer = build_tokenizer()
    model = build_policy(tokenizer, seed=seed)
    path = os.fspath(out_dir)
    os.makedirs(path, exist_ok=True)
    bar_shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # the bench prints its own progress
    try:
        model.save_pretrained(path)
    finally:
        if bar_shown:
            hf_logging.enable_progress_bar()
    tokenizer.save_pretrained(path)
    return path


def llama_parameters(
    *,
    vocab_size: int = VOCAB_SIZE,
    hidden_size: int = HIDDEN_SIZE,
    num_layers: int = NUM_LAYERS,
    intermediate_size: int = INTERMEDIATE_SIZE,
    num_heads: int = NUM_HEADS,
    num_kv_heads: int = NUM_KV_HEADS,
) -> int:
    """Parameters of a Llama without biases, embeddings tied: V·h + L·(2h² + 2h·kv + 3h·I + 2h) + h, where
    kv = h·(KV heads ÷ heads) is the width of the keys and of the values.

    >>> llama_parameters()
    41689600
    """
    kv_width = hidden_size * num_kv_heads // num_heads
    attention = 2 * hidden_size * hidden_size + 2 * hidden_size * kv_width
    layer = attention + 3 * hidden_size * intermediate_size + 2 * hidden_size
    return vocab_size * hidden_size + num_layers * layer + hidden_size


def describe() -> str:
    """One line naming the policy, for the bench's figures."""
    return (
        f"Llama, {llama_parameters() / 1e6:.1f}M parameters: hidden {HIDDEN_SIZE}, {NUM_LAYERS} layers, "
        f"MLP {INTERMEDIATE_SIZE}, vocabulary {VOCAB_SIZE:,}; float32, random weights"
    )
