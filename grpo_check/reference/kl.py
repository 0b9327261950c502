"""Stage `kl`: per-token KL(π‖π_ref) estimators (spec §5, K1–K4).

With x = ref_logp − logp (so π_ref/π = eᵡ), evaluated on tokens sampled from π:

* k1 = −x = log π/π_ref (unbiased, can be negative)            (K1)
* k2 = ½ x²                                                     (K2)
* k3 = eᵡ − 1 − x, written expm1(x) − x for accuracy near 0     (K3)
* ρ·k3, the ratio-weighted k3 (TRL ``use_bias_correction_kl``)  (K4)

Example::

    >>> import torch
    >>> from grpo_check.reference import kl_k3
    >>> kl_k3(torch.tensor([-1.0]), torch.tensor([-1.0]))        # π = π_ref → 0 exactly
    tensor([0.], dtype=torch.float64)
"""

from __future__ import annotations

import torch

from grpo_check.findings import InputError
from grpo_check.reference._util import as_f64

KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_k1(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """k1 = logp − ref_logp.  # (K1)"""
    return as_f64(logps) - as_f64(ref_logps)  # (K1)


def kl_k2(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """k2 = ½ (logp − ref_logp)².  # (K2)"""
    return 0.5 * (as_f64(logps) - as_f64(ref_logps)) ** 2  # (K2)


def kl_k3(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """k3 = exp(x) − x − 1 with x = ref_logp − logp, computed as expm1(x) − x (no cancellation near 0).  # (K3)"""
    x = as_f64(ref_logps) - as_f64(logps)
    return torch.expm1(x) - x  # (K3)


def per_token_kl(
    logps: torch.Tensor,
    ref_logps: torch.Tensor,
    estimator: str = "k3",
    ratio: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-token KL estimate (B, T); with ``ratio`` (token (B, T) or sequence (B, 1) ρ) returns ρ·k.  # (K1)–(K4)

    The ratio is NOT detached, as in TRL: its gradient is part of the bias-corrected estimator's gradient.
    """
    if estimator == "k1":
        kl = kl_k1(logps, ref_logps)
    elif estimator == "k2":
        kl = kl_k2(logps, ref_logps)
    elif estimator == "k3":
        kl = kl_k3(logps, ref_logps)
    else:
        raise InputError(f"estimator must be one of {KL_ESTIMATORS}, got {estimator!r}", field="kl_estimator")
    if ratio is not None:
        kl = kl * as_f64(ratio)  # (K4)
    return kl
