"""The reference's own forward passes of a model on a captured step's batch (eval mode, no grad).

* :func:`model_logps` — per-token log-probs of the completion (positions from the attention mask by default);
* :func:`model_logits` — the completion logits (for the kept sampling mass and the diagnoses);
* :func:`model_logps_shifted` — log-probs with a misaligned one-token shift (the off-by-one diagnosis);
* :func:`window_known_logps` / :class:`KnownLogps` — one forward pass shared by the micro-batches of a window;
* :func:`set_training` — a fast ``model.train(flag)`` for the mode switches around each pass.

A step whose meta records a row subset (``meta["forward_rows"]``, :mod:`grpo_check.stepref.row_subset`) is
run on those rows only: each function above runs the model on the subset's rows and returns the full-size
tensor, NaN on the rows it did not run (:func:`forward_row_mask` says which rows hold values).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
from collections.abc import Iterator
from typing import Any

import torch

from grpo_check._step_cache import cached
from grpo_check.stepref.row_subset import META_KEY, RowSubset
from grpo_check.trace.model import TraceStep

__all__ = [
    "KnownLogps",
    "forward_row_mask",
    "forward_subset",
    "model_logits",
    "model_logps",
    "model_logps_shifted",
    "set_training",
    "window_known_logps",
]


# train() methods that only set ``training`` on the module tree (transformers' override also re-casts kernels, but
# only when ``use_kernels`` is on, which :func:`set_training` checks).
_PLAIN_TRAIN_METHODS = frozenset({"Module.train", "PreTrainedModel.train"})


def set_training(model: Any, training: bool) -> None:
    """``model.train(training)``, without ``nn.Module.train``'s per-module ``__setattr__``.

    On a small model the regular call costs more than half a millisecond, paid twice per forward pass of the
    reference; this sets the same ``training`` flag on every submodule directly. It falls back to
    ``model.train`` for anything that is not a plain module tree (a module class with its own ``train``, a
    transformers model with ``use_kernels``, or an object that is not an ``nn.Module``).
    """
    root = model if isinstance(model, torch.nn.Module) else getattr(model, "wrapped_module", None)
    if not isinstance(root, torch.nn.Module) or getattr(root, "use_kernels", False):
        model.train(training)
        return
    modules = list(root.modules())
    if any(type(module).train.__qualname__ not in _PLAIN_TRAIN_METHODS for module in modules):
        model.train(training)
        return
    for module in modules:
        object.__setattr__(module, "training", training)


@contextlib.contextmanager
def _eval_mode(model: Any) -> Iterator[None]:
    """The reference's forward passes run in eval mode (no dropout); the model's mode is restored after."""
    was_training = bool(getattr(model, "training", False))
    if was_training:
        set_training(model, False)
    try:
        yield
    finally:
        if was_training:
            set_training(model, True)


_BATCH = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask")


def forward_subset(step: TraceStep) -> RowSubset | None:
    """The row subset the step's meta records for the forward passes, or ``None`` when they run on every row
    (no subset recorded, every row chosen, or a subset that does not fit the step's rows). Read once per
    step while a step cache is open (several comparisons ask)."""
    return cached(("forward_subset", id(step)), lambda: (step, _forward_subset(step)))[1]


def _forward_subset(step: TraceStep) -> RowSubset | None:
    subset = RowSubset.from_meta(step.meta.get(META_KEY))
    if subset is None or subset.is_all or not step.has("completion_ids"):
        return None
    return subset if subset.total == int(step["completion_ids"].shape[0]) else None


def forward_row_mask(step: TraceStep) -> torch.Tensor | None:
    """(B,) bool: the rows the reference's forward passes ran on, or ``None`` for every row (one tensor per
    step while a step cache is open: never modify it)."""
    subset = forward_subset(step)
    return None if subset is None else cached(("forward_row_mask", id(step)), lambda: subset.mask())


def _subset_step(step: TraceStep, rows: tuple[int, ...]) -> TraceStep:
    """The batch tensors of ``rows`` (no subset in its meta: a forward over it runs on all its rows)."""
    index = torch.tensor(rows, dtype=torch.long)
    return TraceStep(tensors={name: step[name][index] for name in _BATCH if step.has(name)}, meta={})


def _scattered(values: torch.Tensor, rows: tuple[int, ...], total: int) -> torch.Tensor:
    """``values`` (one entry per row of ``rows``) at those rows of a NaN tensor of ``total`` rows."""
    out = torch.full((total, *values.shape[1:]), float("nan"), dtype=values.dtype, device=values.device)
    out[torch.tensor(rows, dtype=torch.long, device=values.device)] = values
    return out


def _sequence_logits(model: Any, step: TraceStep) -> torch.Tensor | None:
    """Logits (B, P+T, V) of ``model`` over prompt + completion, no grad, eval mode, positions from the
    attention mask (as generation numbers them); ``None`` when the batch tensors were not captured. The
    model runs on its own device; the logits come back on the step's (a full copy: only the diagnoses and
    the kept-sampling-mass comparison ask for them)."""
    from grpo_check.reference.logps import on_model_device, position_ids_from_mask

    if not step.has("prompt_ids", "prompt_mask", "completion_ids", "completion_mask"):
        return None
    if isinstance(model, KnownLogps) and model.model is None:
        return None
    subset = forward_subset(step)
    if subset is not None:
        part = _sequence_logits(model, _subset_step(step, subset.rows))
        return None if part is None else _scattered(part, subset.rows, subset.total)
    input_ids = torch.cat([step["prompt_ids"], step["completion_ids"]], dim=1)
    attention = torch.cat([step["prompt_mask"], step["completion_mask"]], dim=1).long()
    inputs = on_model_device(
        model,
        {
            "input_ids": input_ids,
            "attention_mask": attention,
            "position_ids": position_ids_from_mask(attention),
        },
    )
    with _eval_mode(model), torch.no_grad():
        out = model(**inputs)
    return (out.logits if hasattr(out, "logits") else out[0]).detach().to(input_ids.device)


def model_logits(model: Any, step: TraceStep) -> torch.Tensor | None:
    """Completion logits (B, T, V) of ``model``: position P−1+t predicts completion token t."""
    logits = _sequence_logits(model, step)
    if logits is None:
        return None
    n = step["completion_ids"].shape[1]
    return logits[:, -(n + 1) : -1, :]


def model_logps_shifted(model: Any, step: TraceStep, temperature: float, shift: int) -> torch.Tensor | None:
    """Own forward pass, but token t scored by the logits at position P−1+t+shift (a misaligned one-token shift)."""
    from grpo_check.reference.logps import logps_from_logits

    if not step.has("prompt_ids", "completion_ids"):
        return None
    prompt_length, length = step["prompt_ids"].shape[1], step["completion_ids"].shape[1]
    start = prompt_length - 1 + shift
    if start < 0:
        return None
    logits = _sequence_logits(model, step)
    if logits is None:
        return None
    logits = logits[:, start : start + length, :]
    if logits.shape[1] < length:  # shift past the end: pad with the last position (masked out by the caller)
        logits = torch.cat([logits, logits[:, -1:].expand(-1, length - logits.shape[1], -1)], dim=1)
    return logps_from_logits(logits, step["completion_ids"], temperature)


@dataclasses.dataclass(frozen=True)
class KnownLogps:
    """A model whose log-probs for one step's batch were already computed by the reference's own forward pass.

    A frozen reference model scores a row the same way in every micro-batch, so an adapter may run its forward
    once over a whole generation batch and hand each micro-batch its rows. :func:`model_logps` returns
    ``logps`` for the convention they were computed with (positions from the attention mask, at
    ``temperature``) and runs ``model`` itself for any other (the position-ids diagnosis).
    """

    model: Any
    logps: torch.Tensor
    temperature: float

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:  # config, training, train(), wrapped_module: the model's own
        if name in ("model", "logps", "temperature"):  # not set yet (copy/unpickle): no recursion
            raise AttributeError(name)
        return getattr(self.model, name)


def window_known_logps(model: Any, steps: list[TraceStep], temperature: float) -> list[Any]:
    """``KnownLogps`` per step from ONE forward pass of ``model`` over all the steps' rows (micro-batches of one
    gradient-accumulation window: the weights do not change inside it), or ``model`` itself for each step when
    their prompt or completion widths differ or the batch tensors are missing. A step with a row subset in its
    meta contributes only those rows (its ``KnownLogps`` is NaN on the others). The caller sets no-grad and RNG.
    """
    if len(steps) < 2 or any(
        not s.has(*_BATCH) or s[name].shape[1] != steps[0][name].shape[1] for s in steps for name in _BATCH
    ):
        return [model] * len(steps)
    subsets = [forward_subset(s) for s in steps]
    parts = [
        s if subset is None else _subset_step(s, subset.rows)
        for s, subset in zip(steps, subsets, strict=True)
    ]
    combined = TraceStep(tensors={name: torch.cat([p[name] for p in parts]) for name in _BATCH}, meta={})
    logps = model_logps(model, combined, temperature)  # restores the model's train mode
    if logps is None:
        return [model] * len(steps)
    bounds = [0]
    for part in parts:
        bounds.append(bounds[-1] + int(part["completion_ids"].shape[0]))
    known = []
    for (start, stop), subset in zip(itertools.pairwise(bounds), subsets, strict=True):
        own = logps[start:stop]
        known.append(
            KnownLogps(
                model, own if subset is None else _scattered(own, subset.rows, subset.total), temperature
            )
        )
    return known


def model_logps(
    model: Any, step: TraceStep, temperature: float, positions: str = "from_mask", attention: str = "mask"
) -> torch.Tensor | None:
    """The reference's own forward pass (``grpo_check.reference.logps_from_model``) on the step's batch.

    ``attention="none"``: the forward a helper that forgets the attention mask runs (every position attended,
    padding included, positions 0..P+T−1): a diagnosis variant, never the reference."""
    from grpo_check.reference.logps import logps_from_model

    if not step.has(*_BATCH):
        return None
    if isinstance(model, KnownLogps):
        if positions == "from_mask" and attention == "mask" and temperature == model.temperature:
            return model.logps
        model = model.model
    if model is None:  # log-probs known for one convention only, and no model to compute another
        return None
    subset = forward_subset(step)
    if subset is not None:
        part = model_logps(model, _subset_step(step, subset.rows), temperature, positions, attention)
        return None if part is None else _scattered(part, subset.rows, subset.total)
    prompt_mask, completion_mask = step["prompt_mask"], step["completion_mask"]
    if attention == "none":
        prompt_mask, completion_mask = torch.ones_like(prompt_mask), torch.ones_like(completion_mask)
        positions = "arange"
    with _eval_mode(model):
        return logps_from_model(
            model,
            step["prompt_ids"],
            prompt_mask,
            step["completion_ids"],
            completion_mask,
            temperature=temperature,
            positions=positions,
        )
