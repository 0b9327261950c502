"""The zoo's tiny world, built from code: a 16-symbol vocabulary of plain integer ids (:class:`ToyVocab`)
and a 2-layer GPT-2 over it (:func:`build_tiny_policy`; absolute position embeddings, so left padding
without position ids really changes log-probs, as in TRL #6800)."""

from __future__ import annotations

import dataclasses

import torch

__all__ = ["ToyVocab", "build_tiny_policy"]


# ----------------------------------------------------------------------------------------------- vocab
@dataclasses.dataclass(frozen=True)
class ToyVocab:
    """Plain integer ids: specials first, then the letters ``a``..``l``.

    ``pad_is_eos`` reuses the EOS id as padding (the tokenizer setting behind bug-catalog #11).
    ``extra_eos`` adds a secondary end-of-turn id (``;``), as chat templates do.
    """

    pad_is_eos: bool = False
    secondary_eos: bool = False
    letters: str = "abcdefghijkl"

    @property
    def eos_token_id(self) -> int:
        return 1

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """Every id that ends a completion. With ``secondary_eos`` there are two, as with chat models whose
        turns end with an end-of-turn id (1, ``<|im_end|>``) while ``tokenizer.eos_token_id`` is another
        (3, ``<|endoftext|>``)."""
        return (1, 3) if self.secondary_eos else (1,)

    @property
    def tokenizer_eos_token_id(self) -> int:
        """The single id ``tokenizer.eos_token_id`` reports."""
        return 3 if self.secondary_eos else 1

    @property
    def pad_token_id(self) -> int:
        return 1 if self.pad_is_eos else 0

    @property
    def bos_token_id(self) -> int:
        return 2

    @property
    def tool_token_id(self) -> int:
        return 3  # marks the start of a tool answer inside a completion

    @property
    def first_letter_id(self) -> int:
        return 4

    @property
    def size(self) -> int:
        return self.first_letter_id + len(self.letters)

    def letter_id(self, char: str) -> int:
        return self.first_letter_id + self.letters.index(char)

    def decode(self, ids: list[int]) -> str:
        """Letters only (specials skipped, like ``skip_special_tokens=True``); the tool marker shows as ``|``."""
        out = []
        for token in ids:
            if token == self.tool_token_id and not self.secondary_eos:
                out.append("|")
            elif token >= self.first_letter_id:
                out.append(self.letters[token - self.first_letter_id])
        return "".join(out)


def build_tiny_policy(vocab_size: int, *, seed: int = 0, dropout: float = 0.0) -> torch.nn.Module:
    """A 2-layer GPT-2 (hidden 32, 2 heads) with deterministic weights; float32; ``eval()`` mode."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=2,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        initializer_range=0.3,
        bos_token_id=2,
        eos_token_id=1,
    )
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config)
    finally:
        torch.random.set_rng_state(state)
    model.eval()
    return model
