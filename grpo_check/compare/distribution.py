"""Sampler-vs-trainer log-prob metrics (bug-catalog #1, #3, #26, #29).

With ``d = logps − sampler_logps`` on the completion mask (the trainer's and the sampler's log-prob of the
same sampled token):

* ``mean_abs_d``, ``max_abs_d`` — how far apart the two engines are;
* ``k1`` = mean(−d) and ``k3`` = mean(exp(d) − 1 − d) — estimates of KL(π_sampler ‖ π_trainer) on tokens
  drawn from the sampler (Schulman's k1/k3);
* ``pearson`` — correlation of the two log-prob vectors (a shifted or mangled token order drops it);
* ``frac_ratio_outside`` — fraction of tokens with exp(d) outside [0.5, 2] (heavy tails: MoE routing #29);
* ``trend`` — slope of ``mean_abs_d`` over steps (:func:`trend`), drift at lr=0 means stale weights (#26).

A sampler that renormalises over a truncated support (top-p/top-k/min-p) reports
``sampler_logps = logps − log S_t`` where S_t is the kept mass, so the *expected* d is ``log S_t``
(:func:`expected_d_from_kept_mass`); when the kept mass is available the residual d − log S_t is what is
left to explain.

Example::

    >>> import torch
    >>> from grpo_check.compare.distribution import sampler_metrics
    >>> logps = torch.log(torch.tensor([[0.5, 0.25, 0.9]]))
    >>> m = sampler_metrics(logps, logps - 0.1, torch.ones(1, 3))
    >>> round(m["mean_abs_d"], 3), m["frac_ratio_outside"]
    (0.1, 0.0)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from grpo_check._step_cache import bool_mask, cached, f64, host_view

AGREEMENT = "sampler_agreement"
"""Step-cache key of what :func:`sampler_metrics` found on its selection (the masked tokens where both log-probs
are finite): ``(AGREEMENT, (id(trainer copy), id(sampler copy), id(bool mask)))`` → ((tokens, largest
|trainer − sampler|, largest |sampler|), the three tensors, which the entry keeps alive so that their ids stay
theirs). :func:`grpo_check.diagnose._context.close` answers from it instead of comparing the same two float64
copies on the same selection again (a step cache's float64 copies are never modified in place)."""


def sampler_metrics(
    logps: torch.Tensor, sampler_logps: torch.Tensor, completion_mask: torch.Tensor
) -> dict[str, Any]:
    """Distribution metrics of d = logps − sampler_logps over the completion mask (see module doc).

    Computed in float64 numpy: a handful of reductions, each a fraction of a torch call's overhead on the
    small batches checked live.
    """
    trainer, sampler = f64(logps), f64(sampler_logps)
    lp, sp = _array(trainer), _array(sampler)
    # x ≠ 0 on the mask's shared view (the invariants read it too); the step's bool mask, x ≠ 0 too, as the key
    mask = (_array(completion_mask) != 0) & np.isfinite(lp) & np.isfinite(sp)
    tensors = (trainer, sampler, bool_mask(completion_mask))
    key = (AGREEMENT, (id(tensors[0]), id(tensors[1]), id(tensors[2])))
    n = int(np.count_nonzero(mask))
    if n == 0:
        cached(key, lambda: ((0, math.nan, math.nan), tensors))
        return {"tokens": 0}
    x, y = lp[mask], sp[mask]
    # (lp − sp)[mask], element for element, without subtracting the masked-out (possibly infinite) elements
    d = x - y
    abs_d = np.abs(d)
    ratio = np.exp(d)
    max_abs_d = float(np.maximum.reduce(abs_d))  # abs_d.max() without its Python wrapper
    record = (n, max_abs_d, float(np.maximum.reduce(np.abs(y))))
    cached(key, lambda: (record, tensors))
    # means as sum / n: what ndarray.mean computes for float64 (add.reduce, then a division by the count),
    # without its Python wrapper on these small arrays
    # Pearson is undefined for a constant vector: JSON null there, or 1 for equal vectors
    pearson: float | None = _pearson(x, y) if n > 1 else math.nan
    if not math.isfinite(pearson):
        pearson = 1.0 if bool(np.array_equal(x, y)) else None
    # the first largest |d| over the masked elements (|d| is no NaN: both sides are finite there), as a flat
    # index of the full grid: the position of that masked element (the compressed order is the flat order)
    worst_flat = int(mask.ravel().nonzero()[0][abs_d.argmax()])
    cols = lp.shape[1] if lp.ndim == 2 else 1
    total = float(np.add.reduce(d))
    return {
        "tokens": n,
        "mean_d": total / n,
        "mean_abs_d": _mean(abs_d, n),
        "max_abs_d": max_abs_d,
        # mean(−d): the sum of the negated values is the negated sum (rounding is symmetric in sign), but for
        # the sign of an exact zero (x + (−x) is +0 either way): summed afresh then
        "k1": -total / n if total != 0.0 else _mean(-d, n),
        "k3": _mean(ratio - 1 - d, n),
        "pearson": pearson,
        "frac_ratio_outside": _outside(ratio, max_abs_d) / n,
        "worst_row": worst_flat // cols,
        "worst_token": worst_flat % cols,
        "values": d[:4096].tolist(),
    }


# |d| up to this bound puts exp(d) within [0.5016, 1.9937]: inside [0.5, 2] by a margin far beyond exp's rounding
# (an ulp or so), so no ratio needs counting (ln 2 = 0.6931...)
_INSIDE_RATIO_BOUNDS = 0.69


def _outside(ratio: np.ndarray, max_abs_d: float) -> int:
    """How many of the ratios exp(d) lie outside [0.5, 2]: none where every |d| ≤ 0.69 (most steps), else
    counted."""
    if max_abs_d <= _INSIDE_RATIO_BOUNDS:
        return 0
    return int(np.count_nonzero((ratio < 0.5) | (ratio > 2.0)))


def _array(tensor: torch.Tensor) -> np.ndarray:
    """``tensor`` as a numpy array: the step's shared view of a small CPU tensor, else a detached host copy."""
    host = host_view(tensor)
    return host if host is not None else tensor.detach().cpu().numpy()


def _mean(values: np.ndarray, count: int) -> float:
    """``float(values.mean())`` of a 1-D float64 array of ``count`` elements, bit for bit."""
    return float(np.add.reduce(values)) / count


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of two vectors, clipped to [−1, 1]; NaN when either is constant."""
    count = x.size  # (the means as _mean computes them, inlined)
    x_centred, y_centred = x - float(np.add.reduce(x)) / count, y - float(np.add.reduce(y)) / count
    # np.add.reduce: the reduction ndarray.sum calls, without its Python wrapper
    denominator = math.sqrt(
        float(np.add.reduce(x_centred * x_centred)) * float(np.add.reduce(y_centred * y_centred))
    )
    if denominator == 0.0:
        return math.nan
    return max(-1.0, min(1.0, float(np.add.reduce(x_centred * y_centred)) / denominator))


def expected_d_from_kept_mass(kept_mass: torch.Tensor) -> torch.Tensor:
    """Expected d = logps − sampler_logps = log S_t for a sampler that renormalises over its support."""
    return torch.log(kept_mass.detach().double().clamp_min(1e-300))


def trend(values: Sequence[float]) -> float:
    """Least-squares slope of ``values`` against their index (0 for fewer than two finite points)."""
    points = [(i, v) for i, v in enumerate(values) if v is not None and math.isfinite(v)]
    if len(points) < 2:
        return 0.0
    n = len(points)
    mx = sum(i for i, _ in points) / n
    my = sum(v for _, v in points) / n
    sxx = sum((i - mx) ** 2 for i, _ in points)
    sxy = sum((i - mx) * (v - my) for i, v in points)
    return sxy / sxx if sxx else 0.0


# Thresholds for the sampler-vs-trainer verdict (bf16 vLLM vs fp32 trainer typically has k3 ~ 1e-4..1e-3).
WARN_K3 = 1e-3
FAIL_K3 = 1e-2
FAIL_FRAC_OUTSIDE = 1e-2
