"""Small shared helpers for the reference (internal)."""

from __future__ import annotations

import torch

DTYPE = torch.float64


def as_f64(x: torch.Tensor | float | list, *, device: torch.device | None = None) -> torch.Tensor:
    """Return ``x`` as a float64 tensor (no copy when it already is one)."""
    if isinstance(x, torch.Tensor):
        return x if x.dtype is DTYPE else x.double()  # .double(): the same conversion, less call overhead
    return torch.as_tensor(x, dtype=DTYPE, device=device)


def as_mask(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """A {0,1} float64 mask shaped like ``like``; ``None`` means "every token counts"."""
    if mask is None:
        return torch.ones_like(like, dtype=DTYPE)
    return mask if mask.dtype is DTYPE else mask.double()


def masked_row_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ_t m_t x_t / max(Σ_t m_t, 1) per row, shape (B, 1)."""
    return (values * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1.0)
