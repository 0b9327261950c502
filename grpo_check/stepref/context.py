"""GRPO coordinates of a captured step (:class:`StepContext`) and the float64 view of its tensors."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from grpo_check._step_cache import all_true_like, bool_mask, f64
from grpo_check.findings import Where

__all__ = ["StepContext", "as_f64"]


_Tensor, _FLOAT64 = torch.Tensor, torch.float64

_IDS_AS_LIST = 4096  # up to this many completion ids, ``where`` reads token ids from a Python copy


@dataclasses.dataclass
class StepContext:
    """GRPO coordinates of one captured step: turns a (row, token) into a :class:`Where`."""

    step: int | None = None
    micro_batch: int | None = None
    rank: int | None = None
    group_index: torch.Tensor | None = None
    completion_ids: torch.Tensor | None = None
    completion_mask: torch.Tensor | None = None
    dtype: str | None = None
    # group_index as a Python list, converted once (``where`` is called per finding): (source tensor, list)
    _groups: tuple[torch.Tensor, list[int]] | None = dataclasses.field(
        default=None, init=False, repr=False, compare=False
    )
    # completion_ids as (source tensor, its rows as Python lists when small else None, rows, tokens; -1 when
    # not 2-D), read once
    _ids: tuple[torch.Tensor, list[list[int]] | None, int, int] | None = dataclasses.field(
        default=None, init=False, repr=False, compare=False
    )

    def where(self, row: int | None = None, token: int | None = None, prompt: int | None = None) -> Where:
        generation = token_id = None
        if row is not None:
            group_index = self.group_index
            if group_index is not None:
                hit = self._groups
                groups = hit[1] if hit is not None and hit[0] is group_index else self._group_list()
                if row < len(groups):  # len(list) = numel of the tensor it was made from
                    prompt = groups[row]
                    generation = groups[:row].count(prompt)
            ids = self.completion_ids
            if token is not None and ids is not None:
                token_id = self._token_id(ids, row, token)
        return Where(
            step=self.step,
            micro_batch=self.micro_batch,
            rank=self.rank,
            prompt=prompt,
            generation=generation,
            row=row,
            token=token,
            token_id=token_id,
        )

    def _token_id(self, ids: torch.Tensor, row: int, token: int) -> int | None:
        """``completion_ids[row, token]`` as an int (``None`` outside a 2-D tensor); a small step's ids are
        converted to Python lists once."""
        hit = self._ids
        if hit is None or hit[0] is not ids:
            if ids.dim() != 2:
                hit = (ids, None, -1, -1)
            else:
                rows, tokens = ids.shape
                hit = (ids, ids.tolist() if ids.numel() <= _IDS_AS_LIST else None, rows, tokens)
            self._ids = hit
        if row >= hit[2] or token >= hit[3]:
            return None
        as_list = hit[1]
        return int(as_list[row][token]) if as_list is not None else int(ids[row, token])

    def _group_list(self) -> list[int]:
        """``group_index`` as a Python list, converted once per context (``where`` is called per finding)."""
        if self._groups is None or self._groups[0] is not self.group_index:
            index = self.group_index
            flat = index if index.dim() == 1 else index.reshape(-1)  # (no view of a 1-D index: an operation)
            self._groups = (index, [int(g) for g in flat.tolist()])
        return self._groups[1]

    def token_mask(self, like: torch.Tensor) -> torch.Tensor:
        """Boolean mask of the compared elements for a tensor shaped like ``like``."""
        mask = self.completion_mask
        if mask is not None and like.dim() == 2:
            shape = like.shape
            if shape == mask.shape:
                return bool_mask(mask)  # shared with the invariants' token mask while a step cache is open
            if shape[1] == 1:
                return mask.bool().any(dim=1, keepdim=True)
        return all_true_like(like)


def as_f64(tensor: Any) -> torch.Tensor:
    """``tensor`` detached, as float64 (itself when it already is one and carries no autograd graph); one
    conversion per tensor while a :func:`~grpo_check._step_cache.step_cache` is open."""
    if type(tensor) is _Tensor and tensor.dtype is _FLOAT64 and not tensor.requires_grad:
        return tensor  # what ``f64`` answers for it, without its memo lookup
    if isinstance(tensor, torch.Tensor):
        return f64(tensor)
    return torch.as_tensor(tensor).double()
