"""A tiny causal-LM policy and a character-level tokenizer, built from code (nothing is downloaded).

The demo and the tests run TRL's real ``GRPOTrainer`` on this model. It is a 2-layer Llama with a hidden size
of 32 over a ~40-symbol character vocabulary: big enough to exercise every stage (attention masks, rotary
positions, left padding, EOS handling), small enough to train a step in well under a second on one CPU core.

Example::

    >>> from grpo_check.demo.model import build_tokenizer, build_policy
    >>> tok = build_tokenizer()
    >>> tok.decode(tok("rev:12=")["input_ids"])
    'rev:12='
    >>> model = build_policy(tok, seed=0)
    >>> model.config.num_hidden_layers
    2
"""

from __future__ import annotations

import os
import string
from typing import Any

PAD = "<pad>"
EOS = "<eos>"
UNK = "<unk>"
CHARS: str = string.digits + string.ascii_lowercase + ":=+-"


def build_tokenizer(*, pad_is_eos: bool = False) -> Any:
    """A character-level ``PreTrainedTokenizerFast`` (one token per character, left padding).

    ``pad_is_eos=True`` gives a tokenizer whose pad token *is* the EOS token (the setting in which a
    completion mask built from ``!= pad`` would drop the EOS: bug-catalog #11).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = [UNK, EOS] if pad_is_eos else [PAD, UNK, EOS]
    vocab = {tok: i for i, tok in enumerate([*specials, *CHARS])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token=UNK,
        eos_token=EOS,
        pad_token=EOS if pad_is_eos else PAD,
        padding_side="left",
        model_input_names=[
            "input_ids",
            "attention_mask",
        ],  # as a causal LM's: no token_type_ids for generate()
    )
    return tokenizer


HIDDEN_SIZE = 32
NUM_LAYERS = 2


def policy_config_fields(tokenizer: Any) -> dict[str, Any]:
    """The config fields every policy built from code here shares: ``tokenizer``'s pad and EOS ids, no BOS
    id, input and output embeddings tied, no attention dropout."""
    return {
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": None,
        "tie_word_embeddings": True,
        "attention_dropout": 0.0,
    }


def seeded_model(model_class: Any, config: Any, tokenizer: Any, *, seed: int) -> Any:
    """``model_class(config)`` with its random weights drawn from ``seed`` (the global RNG is restored after),
    its generation config's pad and EOS ids taken from ``tokenizer`` and no BOS id."""
    import torch

    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = model_class(config)
    finally:
        torch.random.set_rng_state(state)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = None
    return model


def build_policy(
    tokenizer: Any, *, seed: int = 0, hidden_size: int = HIDDEN_SIZE, num_layers: int = NUM_LAYERS
) -> Any:
    """A tiny ``LlamaForCausalLM`` with deterministic weights (``seed``), dropout off, float32."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        **policy_config_fields(tokenizer),
    )
    return seeded_model(LlamaForCausalLM, config, tokenizer, seed=seed)


def save_policy(
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    pad_is_eos: bool = False,
    hidden_size: int = HIDDEN_SIZE,
    num_layers: int = NUM_LAYERS,
) -> str:
    """Build the policy (of ``hidden_size`` and ``num_layers``: the demo's by default) and tokenizer and save
    both under ``out_dir`` (TRL reloads the reference model from this path when ``beta > 0``). Returns the
    path as a string."""
    tokenizer = build_tokenizer(pad_is_eos=pad_is_eos)
    model = build_policy(tokenizer, seed=seed, hidden_size=hidden_size, num_layers=num_layers)
    path = os.fspath(out_dir)
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
