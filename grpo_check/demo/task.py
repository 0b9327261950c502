"""A toy task with verifiable rewards: copy or reverse a short digit string.

Prompts look like ``rev:3141=`` (answer ``1413``) or ``cpy:27=`` (answer ``27``). Prompts have different
lengths, so TRL left-pads them. Two reward functions:

* :func:`correctness_reward`: fraction of answer positions right (dense, so group rewards vary even for an
  untrained policy), ``None`` for an empty prompt (exercises unscorable rows).
* :func:`format_reward`: fraction of the completion's characters that are digits, halved when the length
  differs from the answer's (dense too).

Example::

    >>> answer_for("rev:123=")
    '321'
    >>> correctness_reward(["rev:123="], ["321"])
    [1.0]
    >>> format_reward(["cpy:12="], ["1a"])
    [0.5]
"""

from __future__ import annotations

import random
from typing import Any


def answer_for(prompt: str) -> str:
    """The verifiable answer of a prompt ``op:digits=``."""
    op, _, rest = prompt.partition(":")
    digits = rest.rstrip("=")
    return digits[::-1] if op == "rev" else digits


def make_prompts(count: int, *, seed: int = 0, min_digits: int = 1, max_digits: int = 4) -> list[str]:
    """``count`` distinct prompts (deterministic for a seed), mixing ``rev`` and ``cpy`` and lengths."""
    rng = random.Random(seed)
    seen: set[str] = set()
    prompts: list[str] = []
    while len(prompts) < count:
        op = rng.choice(("rev", "cpy"))
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(min_digits, max_digits)))
        prompt = f"{op}:{digits}="
        if prompt not in seen:
            seen.add(prompt)
            prompts.append(prompt)
    return prompts


def make_dataset(count: int = 32, *, seed: int = 0) -> Any:
    """A ``datasets.Dataset`` with a ``prompt`` column (standard, non-conversational format)."""
    from datasets import Dataset

    return Dataset.from_dict({"prompt": make_prompts(count, seed=seed)})


def correctness_reward(prompts: list[str], completions: list[str], **_: Any) -> list[float | None]:
    """Fraction of the answer's characters the completion has right at the same position."""
    rewards: list[float | None] = []
    for prompt, completion in zip(prompts, completions, strict=True):
        answer = answer_for(prompt)
        if not answer:
            rewards.append(None)
            continue
        hits = sum(1 for a, c in zip(answer, completion, strict=False) if a == c)
        rewards.append(hits / max(len(answer), len(completion)))
    return rewards


def format_reward(prompts: list[str], completions: list[str], **_: Any) -> list[float]:
    """Fraction of characters that are digits; halved when the length differs from the answer's."""
    rewards: list[float] = []
    for prompt, completion in zip(prompts, completions, strict=True):
        if not completion:
            rewards.append(0.0)
            continue
        digit_fraction = sum(ch.isdigit() for ch in completion) / len(completion)
        same_length = len(completion) == len(answer_for(prompt))
        rewards.append(digit_fraction if same_length else digit_fraction / 2)
    return rewards
