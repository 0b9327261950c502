"""The pure maths of re-derivation: what the batch alone says the loss must receive.

Every function takes plain tensors and numbers (no trainer, no trace) and cites the equation of
``reference/grpo-algorithm.md`` it implements. The checks in :mod:`grpo_check.rederive.checks` hold what a
trainer used against these values.

Example::

    >>> import torch
    >>> ids = torch.tensor([[5, 2, 0, 0], [5, 6, 7, 8], [9, 3, 0, 0]])
    >>> ends = completion_ends(ids, eos_token_ids=[2, 3], pad_token_id=0)
    >>> ends.lengths.tolist(), ends.truncated.tolist()
    ([2, 4, 2], [False, True, False])
    >>> expected_completion_mask(ends, width=4, mask_truncated=True).int().tolist()
    [[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0]]
    >>> window_token_normalizer(num_items_in_batch=40, num_processes=2, gradient_accumulation_steps=2,
    ...                         steps_per_generation=4)
    10.0
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from grpo_check._step_cache import host_view
from grpo_check.config import GRPOSpec


@dataclasses.dataclass(frozen=True)
class CompletionEnds:
    """Where each completion ends, from its token ids alone.

    ``lengths`` (B,): tokens up to and including the first EOS, or the row's generated length when it has no
    EOS. ``truncated`` (B,): the row hit the length limit without any EOS id. ``first_eos`` (B,): index of the
    first EOS (-1 where none). ``eos_id`` (B,): the EOS id found there (-1 where none).
    """

    lengths: torch.Tensor
    truncated: torch.Tensor
    first_eos: torch.Tensor
    eos_id: torch.Tensor


def normalise_eos_ids(*sources: Any) -> list[int]:
    """The union of EOS ids from several sources (an int, a list of ints, or ``None`` each), in first-seen
    order: the tokenizer's ``eos_token_id`` and the model's ``generation_config.eos_token_id`` (which may be a
    list) both end a completion."""
    out: list[int] = []
    for source in sources:
        if source is None:
            continue
        values: Iterable[Any] = source if isinstance(source, list | tuple) else [source]
        for value in values:
            if value is None or isinstance(value, bool):
                continue
            number = int(value)
            if number not in out:
                out.append(number)
    return out


def completion_ends(
    completion_ids: torch.Tensor,
    eos_token_ids: Sequence[int],
    pad_token_id: int | None = None,
    tool_mask: torch.Tensor | None = None,
) -> CompletionEnds:
    """Each row's end from its ids: the first position holding ANY of ``eos_token_ids`` (inclusive), else the
    row's generated length — the padded width, or the last non-pad token when only padding follows (a sampler
    that stopped for another reason). Rows without any EOS are truncated (TRL: the last generated id is not an
    EOS). In a multi-turn completion (``tool_mask`` = 0 on tool outputs) the turns before the last tool output
    end with an EOS of their own: only an EOS after the last tool-output token ends the completion. (M1)"""
    ids = completion_ids.detach()
    rows, width = ids.shape
    host = _host_ids(ids, tool_mask)
    if host is not None:
        return _completion_ends_host(*host, eos_token_ids, pad_token_id)
    eos = torch.tensor(list(eos_token_ids), dtype=ids.dtype, device=ids.device)
    is_eos = torch.isin(ids, eos) if eos.numel() else torch.zeros_like(ids, dtype=torch.bool)
    if tool_mask is not None and tool_mask.shape == ids.shape:
        positions = torch.arange(width, device=ids.device).expand(rows, width)
        tool_output = ~tool_mask.detach().bool()
        last_tool = torch.where(tool_output, positions, -1).amax(1) if width else torch.full((rows,), -1)
        is_eos = is_eos & (positions > last_tool.unsqueeze(1))
    has_eos = is_eos.any(1)
    first = torch.where(has_eos, is_eos.int().argmax(1), torch.full((rows,), -1, dtype=torch.long))
    lengths = torch.where(has_eos, first + 1, torch.full((rows,), width, dtype=torch.long))
    if pad_token_id is not None and int(pad_token_id) not in set(int(e) for e in eos_token_ids):
        positions = torch.arange(width, device=ids.device).expand(rows, width)
        content = torch.where(ids != int(pad_token_id), positions + 1, 0).amax(1) if width else lengths
        lengths = torch.where(has_eos, lengths, content)
    eos_found = torch.where(has_eos, ids.gather(1, first.clamp(min=0).unsqueeze(1)).squeeze(1), -1)
    return CompletionEnds(lengths=lengths, truncated=~has_eos, first_eos=first, eos_id=eos_found)


def _host_ids(ids: torch.Tensor, tool_mask: torch.Tensor | None) -> tuple[Any, Any] | None:
    """Numpy views of small CPU int64 ``ids`` (at least one column) and of the ``tool_mask`` shaped like them
    (``None`` when there is none, or it is shaped otherwise: unused then), else ``None`` (torch's path)."""
    if ids.dtype is not torch.int64 or ids.shape[1] == 0:
        return None
    host = host_view(ids)
    if host is None:
        return None
    if tool_mask is None or tool_mask.shape != ids.shape:
        return host, None
    tool = host_view(tool_mask)
    return None if tool is None else (host, tool)


def _completion_ends_host(
    ids: np.ndarray, tool_mask: np.ndarray | None, eos_token_ids: Sequence[int], pad_token_id: int | None
) -> CompletionEnds:
    """:func:`completion_ends` in numpy: the same integer and boolean operations (exact), at less overhead
    on a small batch."""
    rows, width = ids.shape
    is_eos = np.zeros(ids.shape, dtype=bool)
    for eos in eos_token_ids:
        is_eos |= ids == int(eos)
    positions = np.arange(width)
    if tool_mask is not None:
        last_tool = np.where(tool_mask == 0, positions, -1).max(1)
        is_eos &= positions > last_tool[:, None]
    has_eos = is_eos.any(1)
    first = np.where(has_eos, is_eos.argmax(1), -1)
    lengths = np.where(has_eos, first + 1, width)
    if pad_token_id is not None and int(pad_token_id) not in set(int(e) for e in eos_token_ids):
        content = np.where(ids != int(pad_token_id), positions + 1, 0).max(1)
        lengths = np.where(has_eos, lengths, content)
    eos_found = np.where(has_eos, ids[np.arange(rows), np.maximum(first, 0)], -1)
    return CompletionEnds(
        lengths=torch.from_numpy(lengths),
        truncated=torch.from_numpy(~has_eos),
        first_eos=torch.from_numpy(first),
        eos_id=torch.from_numpy(eos_found),
    )


def expected_completion_mask(ends: CompletionEnds, width: int, *, mask_truncated: bool) -> torch.Tensor:
    """(B, T) bool: the prefix up to each row's end; all zero for truncated rows when
    ``mask_truncated_completions`` is on. (M1)"""
    rows = ends.lengths.shape[0]
    positions = torch.arange(width).expand(rows, width)
    mask = positions < ends.lengths.unsqueeze(1)
    if mask_truncated:
        mask = mask & ~ends.truncated.unsqueeze(1)
    return mask


def loss_mask(completion_mask: torch.Tensor, tool_mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T) float64: m = completion_mask · tool_mask (tool-output tokens never enter the loss). (M1)"""
    mask = completion_mask.detach().to(torch.float64)
    if tool_mask is not None:
        mask = mask * tool_mask.detach().to(torch.float64)
    return mask


def loss_tokens_per_row(completion_mask: torch.Tensor, tool_mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) float64: Σ_t m_{i,t}, the tokens each row contributes to N. (M1), (N3)"""
    return loss_mask(completion_mask, tool_mask).sum(1)


def uses_global_token_count(spec: GRPOSpec) -> bool:
    """True when the loss divides by N = ``num_items_in_batch`` (token_mean over the generation batch: dapo,
    cispo, vespo); bnpo's token_mean uses the local micro-batch count instead. (N2), (N3)"""
    return spec.aggregation_effective == "token_mean" and spec.loss_type != "bnpo"


def window_token_normalizer(
    *,
    num_items_in_batch: float,
    num_processes: int,
    gradient_accumulation_steps: int,
    steps_per_generation: int,
) -> float:
    """The denominator one micro-batch of (N3) uses: max(N, 1)/P · K/S."""
    return (
        max(float(num_items_in_batch), 1.0)
        / num_processes
        * gradient_accumulation_steps
        / steps_per_generation
    )


def optimizer_steps_between(generation_step: int, use_step: int) -> int:
    """Optimizer steps taken between generating a batch and computing a loss on it (≥ 0 when consistent).
    (P1): with none, π_old = π_θ and ρ ≡ 1; with one or more, the old log-probs must be the generating
    policy's, taken before the first update."""
    return int(use_step) - int(generation_step)


def old_logps_required_by_schedule(
    *, gradient_accumulation_steps: int, steps_per_generation: int, num_iterations: int
) -> bool:
    """Whether some micro-batch of a generation batch is trained on after an optimizer step, from the schedule
    alone: a generation batch serves S·μ micro-batches, which straddle an optimizer step unless K is a multiple
    of S·μ (TRL computes old log-probs exactly then). (P1)"""
    generate_every = steps_per_generation * num_iterations
    return gradient_accumulation_steps % generate_every != 0


def unscorable(rewards_per_func: torch.Tensor) -> torch.Tensor:
    """(B,) bool: rows whose every reward function returned NaN (None). (R1)"""
    values = rewards_per_func.detach()
    if values.dim() == 1:
        values = values.unsqueeze(1)
    return torch.isnan(values).all(dim=1)
