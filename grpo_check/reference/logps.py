"""Stage `logps`: per-token log-probs, entropies and the sampler's kept probability mass (spec §3, L1–L6).

Memory: nothing here materialises a float64 (B, T, V) tensor. Rows of the flattened (B·T, V) logits are
processed ``chunk_size`` at a time and upcast chunk by chunk, so the extra working set is a few
``chunk_size × V`` float64 buffers (chunk_size=32, V=151,936 → ≈39 MB each).

Example::

    >>> import torch
    >>> from grpo_check.reference import logps_from_logits
    >>> logits = torch.tensor([[[0.0, 0.0]]])          # one row, one token, uniform over 2 tokens
    >>> round(logps_from_logits(logits, torch.tensor([[1]])).item(), 6)
    -0.693147
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch

from grpo_check.findings import InputError
from grpo_check.reference._util import DTYPE

DEFAULT_CHUNK_SIZE = 32


def completion_logits(full_logits: torch.Tensor, prompt_length: int) -> torch.Tensor:
    """Logits that predict the completion tokens: position P−1+t predicts completion token t.  # (L1)

    ``full_logits`` is (B, P+T, V) for ``input_ids = cat(prompt_ids, completion_ids)``; the result is
    (B, T, V) with ``result[b, t]`` predicting ``completion_ids[b, t]`` (the one-token shift).
    """
    if prompt_length < 1:
        raise InputError(
            "prompt_length must be >= 1: the first completion token is predicted by the last prompt token"
        )
    return full_logits[:, prompt_length - 1 : -1, :]  # (L1)


def _row_chunks(n_rows: int, chunk_size: int) -> Iterator[slice]:
    for start in range(0, n_rows, max(1, chunk_size)):
        yield slice(start, min(start + chunk_size, n_rows))


def _check_shapes(logits: torch.Tensor, completion_ids: torch.Tensor) -> None:
    if logits.dim() != 3 or completion_ids.shape != logits.shape[:2]:
        raise InputError(
            f"logits must be (B, T, V) and completion_ids (B, T); got {tuple(logits.shape)} and "
            f"{tuple(completion_ids.shape)}",
            field="logits",
        )


def logps_and_entropy_from_logits(
    logits: torch.Tensor,
    completion_ids: torch.Tensor,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    *,
    compute_entropy: bool = True,
    dtype: torch.dtype = DTYPE,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log π(y_t) = z_{y_t}/τ − logsumexp(z/τ) (L2) and H_t = −Σ_v p_v log p_v (L3), chunked over tokens.

    ``logits[b, t]`` must already be the logits that predict ``completion_ids[b, t]`` (see
    :func:`completion_logits`). Returns float64 (B, T) tensors (entropy ``None`` unless requested).
    Differentiable w.r.t. ``logits`` (autograd keeps each upcast chunk alive; use under ``torch.no_grad()``
    when only values are needed).
    """
    _check_shapes(logits, completion_ids)
    if temperature <= 0:
        raise InputError(f"temperature must be > 0, got {temperature}", field="temperature")
    batch, length, vocab = logits.shape
    flat_logits = logits.reshape(batch * length, vocab)
    flat_ids = completion_ids.reshape(batch * length, 1).to(torch.long)
    logp_chunks: list[torch.Tensor] = []
    entropy_chunks: list[torch.Tensor] = []
    for rows in _row_chunks(batch * length, chunk_size):
        scaled = flat_logits[rows].to(dtype) / temperature  # (L2) temperature before the softmax
        log_norm = torch.logsumexp(scaled, dim=-1, keepdim=True)
        logp_chunks.append((scaled.gather(-1, flat_ids[rows]) - log_norm).squeeze(-1))  # (L2)
        if compute_entropy:
            log_probs = scaled - log_norm
            entropy_chunks.append(-(log_probs.exp() * log_probs).sum(-1))  # (L3)
            del log_probs
        del scaled
    logps = (
        torch.cat(logp_chunks).reshape(batch, length)
        if logp_chunks
        else logits.new_zeros(batch, length, dtype=dtype)
    )
    entropy = None
    if compute_entropy:
        entropy = (
            torch.cat(entropy_chunks).reshape(batch, length)
            if entropy_chunks
            else logits.new_zeros(batch, length, dtype=dtype)
        )
    return logps, entropy


def logps_from_logits(
    logits: torch.Tensor,
    completion_ids: torch.Tensor,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    *,
    dtype: torch.dtype = DTYPE,
) -> torch.Tensor:
    """Per-token log-probs (B, T) of ``completion_ids`` under ``softmax(logits / temperature)``.  # (L2)

    ``logits[b, t]`` predicts ``completion_ids[b, t]`` (already shifted; see :func:`completion_logits`).

    >>> import torch
    >>> logps_from_logits(torch.zeros(1, 2, 4), torch.tensor([[0, 3]])).exp()
    tensor([[0.2500, 0.2500]], dtype=torch.float64)
    """
    return logps_and_entropy_from_logits(
        logits, completion_ids, temperature, chunk_size, compute_entropy=False, dtype=dtype
    )[0]


def entropy_from_logits(
    logits: torch.Tensor, temperature: float = 1.0, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> torch.Tensor:
    """Per-token entropy (B, T) of ``softmax(logits / temperature)``.  # (L3)"""
    dummy_ids = torch.zeros(logits.shape[:2], dtype=torch.long, device=logits.device)
    return logps_and_entropy_from_logits(logits, dummy_ids, temperature, chunk_size)[1]


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """HF generation's position ids: cumsum(mask) − 1, with 1 at padded positions.  # (L4)

    With left padding the first real token gets position 0, exactly as during ``model.generate``.
    """
    position_ids = attention_mask.long().cumsum(-1) - 1  # (L4)
    return position_ids.masked_fill(attention_mask == 0, 1)


def _forward(model: Any, kwargs: dict[str, Any], logits_to_keep: int) -> Any:
    """``model(**kwargs)``, asking for only the last ``logits_to_keep`` logits and no KV cache where the model
    takes those arguments (transformers models do; a plain module may not)."""
    for extra in ({"logits_to_keep": logits_to_keep, "use_cache": False}, {"logits_to_keep": logits_to_keep}):
        try:
            return model(**kwargs, **extra)
        except TypeError:
            continue
    return model(**kwargs)


def model_device(model: Any) -> torch.device | None:
    """Where ``model`` computes: its ``device`` (transformers models and the wrappers that forward it), else
    the device of its first parameter; ``None`` for a callable with neither."""
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    parameters = getattr(model, "parameters", None)
    if callable(parameters):
        for parameter in parameters():
            return parameter.device
    return None


def on_model_device(model: Any, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``tensors`` moved to :func:`model_device` (unchanged when the model has none): the reference's forward
    passes take CPU-captured batches to wherever the model computes."""
    device = model_device(model)
    if device is None:
        return tensors
    return {name: tensor.to(device) for name, tensor in tensors.items()}


def logps_from_model(
    model: Any,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    temperature: float = 1.0,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    positions: str = "from_mask",
    compute_entropy: bool = False,
    batch_size: int | None = None,
    dtype: torch.dtype = DTYPE,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Own forward pass: log-probs (B, T) of ``completion_ids`` given ``prompt_ids`` (left-padded).  # (L1) (L2) (L4)

    Runs ``model(input_ids=cat(prompt, completion), attention_mask=cat(prompt_mask, completion_mask),
    position_ids=...)`` under ``torch.no_grad()``, keeps only the T logits that predict completion tokens
    (``logits_to_keep=T+1`` where the model supports it), and scores them chunk by chunk in ``dtype``.

    ``positions``: ``"from_mask"`` (default; HF generation convention (L4), the positions the sampler saw),
    ``"arange"`` (0..P+T−1 regardless of padding, what a plain ``model(input_ids, attention_mask)`` call
    uses, e.g. TRL's training forward), or ``"none"`` (pass no position ids). For RoPE models the first two
    agree up to rounding (RoPE is relative); for absolute position embeddings (GPT-2) they do not.
    Returns ``logps`` or ``(logps, entropies)`` when ``compute_entropy``, on the device of ``completion_ids``:
    the inputs are moved to the model's device (a GPU model scores CPU-captured batches), and only the
    (B, T) results come back, never the logits. Positions where ``completion_mask`` is 0 hold the log-prob
    of whatever id sits there; mask them downstream.
    """
    if positions not in ("from_mask", "arange", "none"):
        raise InputError(
            f"positions must be 'from_mask', 'arange' or 'none', got {positions!r}", field="positions"
        )
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1).to(torch.long)
    n_completion = completion_ids.shape[1]
    n_rows = input_ids.shape[0]
    step = batch_size or n_rows
    all_logps: list[torch.Tensor] = []
    all_entropy: list[torch.Tensor] = []
    for start in range(0, n_rows, step):
        rows = slice(start, min(start + step, n_rows))
        kwargs: dict[str, Any] = {"input_ids": input_ids[rows], "attention_mask": attention_mask[rows]}
        if positions == "from_mask":
            kwargs["position_ids"] = position_ids_from_mask(attention_mask[rows])
        elif positions == "arange":
            kwargs["position_ids"] = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(
                input_ids[rows]
            )
        with torch.no_grad():
            out = _forward(model, on_model_device(model, kwargs), logits_to_keep=n_completion + 1)
        logits = out.logits if hasattr(out, "logits") else out[0]
        logits = logits[:, -(n_completion + 1) : -1, :]  # (L1): position P−1+t predicts completion token t
        logps, entropy = logps_and_entropy_from_logits(
            logits,
            completion_ids[rows].to(logits.device),
            temperature,
            chunk_size,
            compute_entropy=compute_entropy,
            dtype=dtype,
        )
        all_logps.append(logps.to(completion_ids.device))
        if entropy is not None:
            all_entropy.append(entropy.to(completion_ids.device))
        del out, logits
    logps = torch.cat(all_logps)
    if compute_entropy:
        return logps, torch.cat(all_entropy)
    return logps


def _top_k_keep(scores: torch.Tensor, top_k: int) -> torch.Tensor:
    """Keep tokens whose score ≥ the k-th largest (ties kept, as HF TopKLogitsWarper).  # (L5a)"""
    k = min(top_k, scores.shape[-1])
    kth = torch.topk(scores, k, dim=-1).values[..., -1:]
    return scores >= kth


def _top_p_keep(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """Smallest set of highest-probability tokens with mass ≥ top_p (HF TopPLogitsWarper rule).  # (L5b)

    Sorted ascending, a token is removed when the cumulative renormalised mass up to and including it is
    ≤ 1 − top_p; the most likely token is always kept.
    """
    sorted_scores, order = torch.sort(scores, dim=-1, descending=False)
    cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = cumulative <= (1.0 - top_p)
    remove_sorted[..., -1] = False
    keep = torch.ones_like(scores, dtype=torch.bool)
    return keep.scatter(-1, order, ~remove_sorted)


def _min_p_keep(scores: torch.Tensor, min_p: float) -> torch.Tensor:
    """Keep tokens with p_v ≥ min_p · max_v p_v (HF MinPLogitsWarper).  # (L5c)"""
    probs = scores.softmax(dim=-1)
    keep = probs >= min_p * probs.amax(dim=-1, keepdim=True)
    return keep.scatter(-1, probs.argmax(dim=-1, keepdim=True), True)


def sampling_kept_mass(
    logits: torch.Tensor,
    completion_ids: torch.Tensor | None = None,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    min_p: float | None = None,
    *,
    order: str = "hf",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    return_in_support: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """S_t: probability mass (under softmax(z/τ) over the full vocabulary) of the truncated sampling support.  # (L5)

    A renormalising sampler reports ``sampler_logps = logps − log S_t`` (L6) for tokens in the support.
    Filters apply in ``order``: ``"hf"`` = temperature → top-k → top-p → min-p (transformers'
    ``_get_logits_processor``), ``"vllm"`` = temperature → min-p → top-k → top-p (vLLM v1 sampler).
    Each filter acts on the distribution renormalised over what the previous filters kept.
    With ``return_in_support`` also returns a bool (B, T): was ``completion_ids[b, t]`` in the support.

    >>> import torch, math
    >>> logits = torch.log(torch.tensor([[[0.5, 0.3, 0.2]]]))
    >>> round(sampling_kept_mass(logits, top_p=0.7).item(), 6)   # keeps {0.5, 0.3}
    0.8
    """
    if logits.dim() != 3:
        raise InputError(f"logits must be (B, T, V), got {tuple(logits.shape)}", field="logits")
    if order not in ("hf", "vllm"):
        raise InputError(f"order must be 'hf' or 'vllm', got {order!r}", field="order")
    batch, length, vocab = logits.shape
    flat = logits.reshape(batch * length, vocab)
    flat_ids = None if completion_ids is None else completion_ids.reshape(batch * length, 1).to(torch.long)
    use_top_k = top_k is not None and 0 < top_k < vocab
    use_top_p = top_p is not None and top_p < 1.0
    use_min_p = min_p is not None and min_p > 0.0
    masses: list[torch.Tensor] = []
    supports: list[torch.Tensor] = []
    for rows in _row_chunks(batch * length, chunk_size):
        scores = flat[rows].to(DTYPE) / temperature
        keep = torch.ones_like(scores, dtype=torch.bool)
        steps = ["top_k", "top_p", "min_p"] if order == "hf" else ["min_p", "top_k", "top_p"]
        for name in steps:
            masked = scores.masked_fill(~keep, -math.inf)
            if name == "top_k" and use_top_k:
                keep &= _top_k_keep(masked, int(top_k))
            elif name == "top_p" and use_top_p:
                keep &= _top_p_keep(masked, float(top_p))
            elif name == "min_p" and use_min_p:
                keep &= _min_p_keep(masked, float(min_p))
        log_probs = scores - torch.logsumexp(scores, dim=-1, keepdim=True)
        masses.append(log_probs.masked_fill(~keep, -math.inf).logsumexp(-1).exp())  # (L5)
        if flat_ids is not None:
            supports.append(keep.gather(-1, flat_ids[rows]).squeeze(-1))
        del scores, keep, log_probs
    mass = torch.cat(masses).reshape(batch, length)
    if return_in_support:
        if flat_ids is None:
            raise InputError("return_in_support needs completion_ids", field="completion_ids")
        return mass, torch.cat(supports).reshape(batch, length)
    return mass
