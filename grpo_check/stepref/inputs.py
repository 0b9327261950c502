"""What the reference is fed for one step: the step's GRPO coordinates, the precision each trainer tensor was
computed in, and the reference's own tensors from the trainer's upstream (stage isolation).

* :func:`step_context` — (step, micro-batch, rank, group index) of a captured step;
* :func:`reference_advantages` — the reference advantages of the trainer's rewards;
* :func:`reference_downstream` — ratio, KL, per-token loss, loss and ∂loss/∂logps of the trainer's
  log-probs and advantages (or of overrides, for the end-to-end pass);
* :class:`StageReference` — the reference tensors one comparison used (handed to the diagnoses).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from grpo_check._step_cache import _current_memo, finite_mask, host_view, plain
from grpo_check.config import GRPOSpec
from grpo_check.reference.advantages import compute_advantages
from grpo_check.reference.loss import aggregate_loss, loss_mask, per_token_loss
from grpo_check.stepref._replayed_grad import replay_key, replayed_grad, trusted
from grpo_check.stepref.context import StepContext, as_f64
from grpo_check.tolerance_defaults import LOW_PRECISION
from grpo_check.trace.model import TraceStep

__all__ = [
    "StageReference",
    "computed_dtype",
    "decided_clip_branch",
    "reference_advantages",
    "reference_aggregation",
    "reference_downstream",
    "rounded_reference",
    "same_precision_reference",
    "step_context",
]


@dataclasses.dataclass
class StageReference:
    """The reference's tensors for one step.

    ``tensors``: stage-isolated values under canonical names (``advantages``, ``rewards``, ``ratio``, ``kl``,
    ``per_token_loss``, ``loss``, ``logps_grad``, ``logps`` / ``ref_logps`` from a model forward, ...).
    ``e2e``: the end-to-end values. ``logits``: the model's completion logits, when a model was given.
    """

    tensors: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    e2e: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    logits: torch.Tensor | None = None
    notes: dict[str, Any] = dataclasses.field(default_factory=dict)

    def get(self, name: str, default: Any = None) -> Any:
        return self.tensors.get(name, default)


def step_context(step: TraceStep, spec: GRPOSpec) -> StepContext:
    """GRPO coordinates of ``step`` (group index inferred as contiguous blocks of G when not captured); one
    per step while a step cache is open (the comparison and the diagnoses share it)."""
    # the cached value holds the step too: its id cannot be reused by another step while the cache is open
    key = ("step_context", id(step), spec.num_generations)
    memo = _current_memo()  # cached(key, ...) inlined (a key of plain values is its own memo key): no closure
    if memo is None:
        return _step_context(step, spec)
    hit = memo.get(key)
    if hit is None:
        hit = memo[key] = ((_step_context(step, spec), step), key)
    return hit[0][0]


def _step_context(step: TraceStep, spec: GRPOSpec) -> StepContext:
    group_index = step.get("group_index")
    if group_index is None:
        for name in ("rewards_per_func", "rewards", "advantages", "completion_ids", "logps"):
            t = step.get(name)
            if t is not None and t.dim() >= 1 and t.shape[0] % spec.num_generations == 0:
                group_index = torch.div(torch.arange(t.shape[0]), spec.num_generations, rounding_mode="floor")
                break
    return StepContext(
        step=step.meta.get("step"),
        micro_batch=step.meta.get("micro_batch"),
        rank=step.meta.get("rank"),
        # (a 1-D index as it is: reshape would add a view, an operation)
        group_index=group_index if group_index is None or group_index.dim() == 1 else group_index.reshape(-1),
        completion_ids=step.get("completion_ids"),
        completion_mask=step.get("completion_mask"),
    )


# Tensors a trainer computes with the model: under mixed precision (e.g. bf16 autocast) they are stored as
# float32 but are only as precise as the compute dtype the capture records in ``meta["compute_dtype"]``.
_MODEL_COMPUTED = frozenset({"logps", "old_logps", "ref_logps", "sampler_logps", "entropies"})


# Tensors computed from other captured tensors: they are only as precise as the coarsest of those as stored
# (a loss computed from bf16 log-probs and returned in float64 carries bf16 rounding).
_COMPUTED_FROM: dict[str, tuple[str, ...]] = {
    "ratio": ("logps", "old_logps"),
    "clipped_ratio": ("logps", "old_logps"),
    "kl": ("logps", "ref_logps"),
    "per_token_loss": ("logps", "old_logps", "ref_logps", "advantages"),
    "loss": ("per_token_loss", "logps", "old_logps", "ref_logps", "advantages"),
    "logps_grad": ("logps", "old_logps", "ref_logps", "advantages"),
}


def computed_dtype(step: TraceStep, name: str) -> str:
    """The precision ``name`` was computed in: the compute dtype for model outputs; for a quantity computed
    from other captured tensors, the coarsest of its own stored dtype and theirs; else the stored dtype.
    (Shared between the comparisons of one step: one table per step, filled name by name.)"""
    key = ("computed_dtype", id(step))
    memo = _current_memo()  # cached(key, dict) inlined (a key of plain values is its own memo key)
    if memo is None:
        table: dict[Any, Any] = {}
    else:
        hit = memo.get(key)
        if hit is None:
            hit = memo[key] = ({}, key)
        table = hit[0]
    dtype = table.get(name)
    if dtype is None:
        full = table.get(_FULL_PRECISION)
        if full is None:
            full = table[_FULL_PRECISION] = _full_precision(step)
        if full:  # no low-precision tensor, no low compute dtype: every tensor as stored
            t = step.tensors.get(name)
            dtype = _dtype_name(t.dtype) if isinstance(t, torch.Tensor) else "float32"
        else:
            dtype = _computed_dtype(step, name)
        table[name] = dtype
    return dtype


_FULL_PRECISION = None  # the table's entry for "nothing of the step is low precision" (names are strings)


def _full_precision(step: TraceStep) -> bool:
    """Whether neither the step's compute dtype nor any of its tensors is low precision: then
    :func:`_computed_dtype` of every name is its stored dtype (one pass for the step, not one per name)."""
    if step.meta.get("compute_dtype") in LOW_PRECISION:
        return False
    low = _LOW_DTYPES
    for t in step.tensors.values():  # noqa: SIM110 (a loop, not all(genexpr): this runs for every step)
        if isinstance(t, torch.Tensor) and t.dtype in low:
            return False
    return True


def _computed_dtype(step: TraceStep, name: str) -> str:
    tensors = step.tensors
    t = tensors.get(name)
    stored = _dtype_name(t.dtype) if isinstance(t, torch.Tensor) else "float32"
    if name in _MODEL_COMPUTED:
        compute = step.meta.get("compute_dtype")
        if compute in LOW_PRECISION:
            return str(compute)
    if stored in LOW_PRECISION:
        return stored
    coarsest: torch.dtype | None = None  # the first of the low-precision inputs with the largest eps
    for input_name in _COMPUTED_FROM.get(name, ()):
        t = tensors.get(input_name)
        if isinstance(t, torch.Tensor):
            dtype = t.dtype
            if dtype in _LOW_DTYPES and (
                coarsest is None or torch.finfo(dtype).eps > torch.finfo(coarsest).eps
            ):
                coarsest = dtype
    return stored if coarsest is None else _dtype_name(coarsest)


# the floating dtypes of LOW_PRECISION
_LOW_DTYPES = frozenset(getattr(torch, name) for name in LOW_PRECISION)


_DTYPE_NAMES: dict[torch.dtype, str] = {}


def _dtype_name(dtype: torch.dtype) -> str:
    """``"float32"`` for ``torch.float32`` (memoised: this runs for every comparison)."""
    name = _DTYPE_NAMES.get(dtype)
    if name is None:
        name = _DTYPE_NAMES[dtype] = str(dtype).removeprefix("torch.")
    return name


def same_precision_reference(reference: torch.Tensor, step: TraceStep, name: str) -> torch.Tensor | None:
    """The reference rounded to the precision ``name`` was computed in: the error a same-precision
    reference makes (``None`` for full-precision tensors)."""
    return rounded_reference(reference, computed_dtype(step, name))


def rounded_reference(reference: torch.Tensor, dtype_name: str) -> torch.Tensor | None:
    """:func:`same_precision_reference` given the :func:`computed_dtype` already looked up."""
    if dtype_name in LOW_PRECISION:
        return reference.detach().to(getattr(torch, dtype_name)).double()
    return None


def _meta_int(meta: Mapping[str, Any], key: str, default: int | None) -> int | None:
    value = meta.get(key)
    try:
        return int(value) if value is not None else default
    except (TypeError, ValueError):
        return default


def _normaliser_settings(meta: Mapping[str, Any]) -> dict[str, Any]:
    """What a step's metadata says of the loss normaliser: the trainer's N, K, P and S for ``aggregate_loss``."""
    items = meta.get("num_items_in_batch")
    return {
        "num_items_in_batch": None if items is None else float(items),
        "gradient_accumulation_steps": _meta_int(meta, "gradient_accumulation_steps", None),
        "num_processes": _meta_int(meta, "num_processes", None),
        "steps_per_generation": _meta_int(meta, "steps_per_generation", None),
    }


def reference_advantages(step: TraceStep, spec: GRPOSpec, group_index: torch.Tensor | None = None):
    """Reference :class:`AdvantageOutput` from the trainer's rewards (``rewards_per_func`` or ``rewards``)."""
    tensors = step.tensors
    rewards = tensors.get("rewards_per_func")
    weights = None
    if rewards is None:
        rewards = tensors.get("rewards")
        if rewards is None:
            return None
    else:
        weights = tensors.get("reward_weights")
    gi = group_index if group_index is not None else step.get("group_index")
    if gi is None and rewards.shape[0] % spec.num_generations:
        return None
    # the step's float64 copy of the rewards (shared with the invariants while a step cache is open)
    if gi is not None and gi.dim() != 1:
        gi = gi.reshape(-1)
    return compute_advantages(as_f64(rewards), gi, spec, reward_weights=weights)


def reference_downstream(
    step: TraceStep, spec: GRPOSpec, **overrides: torch.Tensor | None
) -> dict[str, torch.Tensor] | None:
    """Reference ratio, KL, per-token loss, loss and ∂loss/∂logps from the trainer's upstream tensors.

    ``overrides`` replace trainer inputs by name (e.g. ``advantages=`` the reference advantages for the
    end-to-end pass). Returns ``None`` when ``logps`` or ``advantages`` is missing. Gradients are float64
    autograd with respect to a leaf copy of the given ``logps``; on a small step with a common objective, the
    same operations replayed in numpy (:mod:`grpo_check.stepref._replayed_grad`: the same bits).
    """
    tensors = {**step.tensors, **overrides} if overrides else step.tensors
    logps_in, advantages = tensors.get("logps"), tensors.get("advantages")
    if logps_in is None or advantages is None:
        return None
    ref_logps, entropies = tensors.get("ref_logps"), tensors.get("entropies")
    sampler_logps, sampler_ratio = tensors.get("sampler_logps"), tensors.get("sampler_is_ratio")
    if spec.beta != 0.0 and ref_logps is None:
        return None
    if spec.top_entropy_quantile < 1.0 and entropies is None:
        return None
    if spec.sampler_is_correction and sampler_logps is None and sampler_ratio is None:
        return None
    shared = as_f64(logps_in)
    mask = _loss_mask(
        tensors.get("completion_mask"), shared, tensors.get("tool_mask"), tensors.get("truncated"), spec
    )
    old = tensors.get("old_logps")
    inputs = [
        shared,
        None if old is None else as_f64(old),
        as_f64(advantages),
        mask,
        None if ref_logps is None else as_f64(ref_logps),
        None if entropies is None else as_f64(entropies),
        None if sampler_logps is None else as_f64(sampler_logps),
        None if sampler_ratio is None else as_f64(sampler_ratio),
    ]
    replayed = _replayed(spec, step.meta, inputs) if sampler_ratio is None else None
    if replayed is not None:
        out, agg, grad = replayed
    else:
        # a new leaf over the shared float64 copy (an alias, not a copy: nothing here modifies it in place); a
        # copy of an inference tensor (one made under inference mode cannot require grad outside it)
        inputs[0] = (shared.clone() if shared.is_inference() else shared.detach()).requires_grad_(True)
        out, agg, grad = _autograd_loss_and_grad(spec, step.meta, inputs)
    result = {
        # the loss's own detached view where it made one (its numpy view is then the step cache's already)
        "ratio": plain(out.ratio) if out.ratio_values is None else out.ratio_values,
        "log_ratio": plain(out.log_ratio),
        "per_token_loss": plain(out.per_token_loss),
        "policy_loss": plain(out.policy_loss),
        "loss": plain(agg.loss),
        "loss_normalizer": plain(agg.loss_normalizer),
        "logps_grad": torch.zeros_like(shared) if grad is None else plain(grad),
        "loss_mask": mask,
    }
    for name, value in (
        ("clipped_ratio", out.clipped_ratio),
        ("is_low_clipped", out.is_low_clipped),
        ("is_high_clipped", out.is_high_clipped),
        ("kl", out.kl),
        ("sampler_is_ratio", out.sampler_is_ratio),
    ):
        if value is not None:
            result[name] = plain(value)
    return result


def _autograd_loss_and_grad(
    spec: GRPOSpec, meta: Mapping[str, Any], inputs: list[torch.Tensor | None]
) -> tuple[Any, Any, torch.Tensor | None]:
    """:func:`_loss_and_grad` of ``inputs`` (their log-probs a leaf that requires grad), grad mode on."""
    if torch.is_grad_enabled():  # the usual case: no context to enter
        return _loss_and_grad(spec, meta, *inputs)
    with torch.enable_grad():
        return _loss_and_grad(spec, meta, *inputs)


def _replayed(
    spec: GRPOSpec, meta: Mapping[str, Any], inputs: list[torch.Tensor | None]
) -> tuple[Any, Any, torch.Tensor] | None:
    """(per-token loss, aggregation, ∂loss/∂logps) with the gradient replayed in numpy
    (:mod:`grpo_check.stepref._replayed_grad`) where the objective and the step allow it, else ``None``."""
    key = replay_key(spec)
    logps = inputs[0]
    if key is None or host_view(logps) is None:
        return None
    settings = _normaliser_settings(meta)
    out, agg = _loss(spec, settings, *inputs)
    grad = replayed_grad(
        spec,
        key,
        settings["gradient_accumulation_steps"] or spec.gradient_accumulation_steps,
        logps=logps,
        advantages=inputs[2],
        mask=inputs[3],
        ratio=out.ratio,
        clipped_ratio=out.clipped_ratio,
        normalizer=agg.loss_normalizer,
        ref_logps=inputs[4],
    )
    if grad is None:
        return None

    def same_as_autograd() -> bool:
        leaf = logps.clone().requires_grad_(True)
        reference = _autograd_loss_and_grad(spec, meta, [leaf, *inputs[1:]])[2]
        return reference is not None and _same_bits(reference.detach(), grad)

    return (out, agg, grad) if trusted(key, same_as_autograd) else None


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal shapes and float64 bit patterns, NaN where NaN (whatever its payload), signed zeros alike."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return bool(((a.isnan() & b.isnan()) | (a.view(torch.int64) == b.view(torch.int64))).all())


def _loss_and_grad(
    spec: GRPOSpec,
    meta: Mapping[str, Any],
    logps: torch.Tensor,
    old: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    ref_logps: torch.Tensor | None,
    entropies: torch.Tensor | None,
    sampler_logps: torch.Tensor | None,
    sampler_ratio: torch.Tensor | None,
) -> tuple[Any, Any, torch.Tensor | None]:
    """The per-token loss (O6), its aggregation (N1)–(N6) and ∂loss/∂logps by float64 autograd (grad mode on)."""
    out, agg = _loss(
        spec,
        _normaliser_settings(meta),
        logps,
        old,
        advantages,
        mask,
        ref_logps,
        entropies,
        sampler_logps,
        sampler_ratio,
    )
    return out, agg, _grad_of(agg.loss, logps)


def _loss(
    spec: GRPOSpec,
    settings: Mapping[str, Any],
    logps: torch.Tensor,
    old: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    ref_logps: torch.Tensor | None,
    entropies: torch.Tensor | None,
    sampler_logps: torch.Tensor | None,
    sampler_ratio: torch.Tensor | None,
) -> tuple[Any, Any]:
    """The per-token loss (O6) and its aggregation (N1)–(N6) under the step's normaliser ``settings``."""
    out = per_token_loss(
        logps,
        old,
        advantages,
        mask,
        spec,
        ref_logps=ref_logps,
        entropies=entropies,
        sampler_logps=sampler_logps,
        sampler_is_ratio=sampler_ratio,
    )
    agg = aggregate_loss(
        out.per_token_loss, mask, spec, **settings, entropies=entropies, entropy_mask=out.entropy_mask
    )
    return out, agg


# the engine call torch.autograd.grad makes, without its argument handling (a wrapper of a few dozen Python
# calls, a function-level import among them) for the one case met here: the gradient of a plain 0-d tensor
_run_backward = getattr(getattr(torch.autograd, "graph", None), "_engine_run_backward", None)


def _grad_of(loss: torch.Tensor, logps: torch.Tensor) -> torch.Tensor | None:
    """``torch.autograd.grad(loss, logps, allow_unused=True)[0]``: the same engine run, with the same
    all-ones ``grad_outputs`` (``torch.ones_like(loss)``), through the engine entry point ``grad`` calls
    when ``loss`` is a plain (no subclass, no torch function) 0-d tensor; ``grad`` itself otherwise."""
    if _run_backward is None or type(loss) is not _Tensor or type(logps) is not _Tensor or loss.dim() != 0:
        return torch.autograd.grad(loss, logps, allow_unused=True)[0]
    seed = torch.ones_like(loss, memory_format=torch.preserve_format)
    try:
        return _run_backward((loss,), (seed,), False, False, (logps,), True, accumulate_grad=False)[0]
    except TypeError:  # a private entry point: another torch may call it differently; grad is the contract
        return torch.autograd.grad(loss, logps, allow_unused=True)[0]


_Tensor = torch.Tensor


def reference_aggregation(step: TraceStep, spec: GRPOSpec) -> torch.Tensor | None:
    """The loss the trainer's own ``per_token_loss`` aggregates to under ``spec`` (``None`` without it): the
    aggregation alone, for a step whose upstream (``logps``, ``advantages``) was not captured."""
    values = step.get("per_token_loss")
    if values is None:
        return None
    mask = _loss_mask(step.get("completion_mask"), values, step.get("tool_mask"), step.get("truncated"), spec)
    return aggregate_loss(as_f64(values), mask, spec, **_normaliser_settings(step.meta)).loss.detach()


def _loss_mask(
    completion_mask: torch.Tensor | None,
    like: torch.Tensor,
    tool_mask: torch.Tensor | None,
    truncated: torch.Tensor | None,
    spec: GRPOSpec,
) -> torch.Tensor:
    """The reference's loss mask (M1) from the step's float64 copy of its completion mask (shared with the
    other checks of the step; an all-ones mask like ``like`` when none was captured)."""
    if completion_mask is None:
        completion_mask = torch.ones_like(like, dtype=torch.long)
    mask = as_f64(completion_mask)
    return loss_mask(mask, tool_mask, truncated, spec.mask_truncated_completions)  # (M1)


# tokens whose ratio lies within this many unit roundoffs (of the trainer's precision) of a clip bound
_CLIP_BAND = 4.0
_UNITS: dict[str, float] = {}  # the machine epsilon of a dtype by name (memoised: this runs on every step)


def decided_clip_branch(reference: Mapping[str, torch.Tensor], spec: GRPOSpec, dtype: str) -> torch.Tensor:
    """Where the clip branch of each token is decided (bool, like the reference ``ratio``): not where the
    ratio lies within rounding distance, in the precision ``dtype`` the trainer computed it in, of a clip
    bound 1 − ε_low or 1 + ε_high. There a correct trainer may take either branch, and ∂loss/∂logps
    jumps between them (to 0 when clipped)."""
    ratio = reference["ratio"]
    unit = _UNITS.get(dtype)
    if unit is None:
        unit = _UNITS[dtype] = torch.finfo(getattr(torch, dtype, torch.float32)).eps
    low, high = 1.0 - spec.epsilon_low, 1.0 + spec.epsilon_high_effective
    host = host_view(ratio) if ratio.dtype is torch.float64 else None
    if host is not None:  # a small step: the same IEEE operations in numpy, at less overhead
        return torch.from_numpy(_decided_numpy(host, low, high, _CLIP_BAND * unit))
    band = _CLIP_BAND * unit * ratio.abs()
    near = ((ratio - low).abs() <= band) | ((ratio - high).abs() <= band)
    near &= finite_mask(ratio)  # a NaN/Inf ratio is compared (and fails), never skipped
    return ~near


def _decided_numpy(ratio: np.ndarray, low: float, high: float, scale: float) -> np.ndarray:
    """:func:`decided_clip_branch` on a float64 array, operation for operation (``scale`` = band × unit)."""
    band = scale * np.abs(
        ratio
    )  # no invalid operation (no warning): the bounds and scale are finite, scale > 0
    near = (np.abs(ratio - low) <= band) | (np.abs(ratio - high) <= band)
    near &= np.isfinite(ratio)
    return ~near
