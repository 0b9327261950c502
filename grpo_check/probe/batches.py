"""Synthetic micro-batches that drive every branch of the configured GRPO loss.

A :class:`ProbeBatch` holds canonical tensors (``grpo_check.trace.model.TENSOR_STAGE`` names) plus the
normaliser inputs in ``meta``. :func:`build_probes` makes the probes for a :class:`~grpo_check.GRPOSpec`,
starting from a captured micro-batch when one is given (its completion length, dtype, prompt and completion
ids, masks and log-probs are reused; rows are tiled when a probe needs more) or from scratch otherwise.

Conventions every loss callable sees:

* ``completion_mask`` is the mask *as the loss receives it*: with ``mask_truncated_completions`` a truncated
  row (``truncated``) is already zeroed, as TRL does before its loss. ``tool_mask`` (when present) is
  multiplied in by the loss, as TRL does. The reference's loss mask is (M1) of ``reference/grpo-algorithm.md``.
* ``logps`` are the values of the leaf the loss must be computed from; ``old_logps`` absent means on-policy
  (old = logps.detach()); ``ref_logps`` is present when β ≠ 0; ``entropies`` always (distinct values, so the
  entropy quantile never ties); ``sampler_is_ratio`` when the spec applies the sampler correction.
* ``meta``: ``gradient_accumulation_steps`` (the current accumulation window K), ``steps_per_generation`` S,
  ``num_processes`` P, ``num_items_in_batch`` N (loss tokens of the generation batch over all processes) and
  ``max_completion_length``.

Nothing here consumes the global RNG (probes are deterministic functions of the captured batch and the spec).

Example::

    >>> from grpo_check.config import GRPOSpec
    >>> from grpo_check.probe.batches import build_probes
    >>> [p.name for p in build_probes(GRPOSpec(num_generations=4, loss_type="grpo", gradient_accumulation_steps=2))]
    ['on-policy', 'ratio-grid', 'masks', 'normaliser', 'normaliser-short-window']
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import torch

from grpo_check.config import GRPOSpec
from grpo_check.reference.loss import CLIPPED_SURROGATE_TYPES

SIGNS: tuple[int, ...] = (1, -1, 0)
"""Advantage signs every ratio level is paired with."""

MASKED_LOG_RATIO = 4.0  # log ρ at masked positions: far outside every clip range, must not count
MASKED_ENTROPY = 50.0  # entropy at masked positions: above every real entropy, must not enter the quantile
MIN_ROWS = 8  # rows of a probe built from scratch


@dataclasses.dataclass
class ProbeBatch:
    """One synthetic micro-batch: ``tensors`` by canonical name, normaliser inputs in ``meta``."""

    name: str
    purpose: str
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]

    @property
    def shape(self) -> tuple[int, int]:
        rows, length = self.tensors["completion_mask"].shape
        return int(rows), int(length)

    def get(self, name: str, default: Any = None) -> Any:
        return self.tensors.get(name, default)

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.tensors[name]

    def __contains__(self, name: object) -> bool:
        return name in self.tensors

    def replace(
        self, *, meta: dict[str, Any] | None = None, tensors: dict[str, Any] | None = None
    ) -> ProbeBatch:
        """A copy with some meta entries / tensors replaced (a tensor set to None is dropped)."""
        new_tensors = dict(self.tensors)
        for name, value in (tensors or {}).items():
            if value is None:
                new_tensors.pop(name, None)
            else:
                new_tensors[name] = value
        return dataclasses.replace(self, tensors=new_tensors, meta={**self.meta, **(meta or {})})


@dataclasses.dataclass(frozen=True)
class _Base:
    """What a probe takes from the captured micro-batch (tiled to any number of rows)."""

    rows: int
    length: int
    dtype: torch.dtype
    device: torch.device
    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    mask_dtype: torch.dtype
    logps: torch.Tensor
    accumulation: int
    steps_per_generation: int
    processes: int
    max_completion_length: int

    def tile(self, name: str, rows: int) -> torch.Tensor:
        value = getattr(self, name)
        index = torch.arange(rows, device=value.device) % value.shape[0]
        return value[index].clone()


def _tensors_and_meta(batch: Any) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    if batch is None:
        return {}, {}
    tensors = getattr(batch, "tensors", None)
    if isinstance(tensors, Mapping):
        return tensors, dict(getattr(batch, "meta", {}) or {})
    if isinstance(batch, Mapping):
        return batch, {}
    raise TypeError(
        f"batch must be a TraceStep, a mapping of canonical tensors or None, got {type(batch).__name__}"
    )


def _meta_int(meta: Mapping[str, Any], name: str, default: int) -> int:
    value = meta.get(name)
    return default if value is None else max(int(value), 1)


def _base(batch: Any, spec: GRPOSpec) -> _Base:
    """The captured micro-batch's shape, dtype, ids, masks and log-probs (or synthetic ones)."""
    tensors, meta = _tensors_and_meta(batch)
    accumulation = _meta_int(
        meta,
        "current_gradient_accumulation_steps",
        _meta_int(meta, "gradient_accumulation_steps", spec.gradient_accumulation_steps),
    )
    steps_per_generation = _meta_int(meta, "steps_per_generation", spec.steps_per_generation_effective)
    processes = _meta_int(meta, "num_processes", spec.num_processes)
    mask = tensors.get("completion_mask")
    if isinstance(mask, torch.Tensor) and mask.dim() == 2 and mask.numel() > 0:
        rows, length = (int(n) for n in mask.shape)
        device = mask.device
        logps = tensors.get("logps")
        dtype = (
            logps.dtype if isinstance(logps, torch.Tensor) and logps.dtype == torch.float64 else torch.float32
        )
        if isinstance(logps, torch.Tensor) and logps.shape == mask.shape:
            values = logps.detach().to(dtype)
            fallback = _synthetic_logps(rows, length, dtype, device)
            values = torch.where(torch.isfinite(values) & (values < -1e-3), values, fallback)
        else:
            values = _synthetic_logps(rows, length, dtype, device)
        prompt_ids = tensors.get("prompt_ids")
        prompt_mask = tensors.get("prompt_mask")
        if not isinstance(prompt_ids, torch.Tensor) or prompt_ids.shape[0] != rows:
            prompt_ids = torch.ones(rows, 2, dtype=torch.long, device=device)
            prompt_mask = torch.ones_like(prompt_ids)
        elif not isinstance(prompt_mask, torch.Tensor) or prompt_mask.shape != prompt_ids.shape:
            prompt_mask = torch.ones_like(prompt_ids)
        completion_ids = tensors.get("completion_ids")
        if not isinstance(completion_ids, torch.Tensor) or completion_ids.shape != mask.shape:
            completion_ids = _synthetic_ids(rows, length, device)
        mask_dtype = mask.dtype if not mask.dtype.is_floating_point else torch.long
        base_mask = (mask.detach() != 0).to(mask_dtype)
    else:
        rows = MIN_ROWS
        length = max(3, min(spec.max_completion_length or 8, 8))
        device, dtype, mask_dtype = torch.device("cpu"), torch.float32, torch.long
        values = _synthetic_logps(rows, length, dtype, device)
        prompt_ids = torch.ones(rows, 2, dtype=torch.long)
        prompt_mask = torch.ones_like(prompt_ids)
        completion_ids = _synthetic_ids(rows, length, device)
        base_mask = _lengths_mask(
            [length, length - 1, 2, length, 1, length - 2, length, 3], length, mask_dtype
        )
    return _Base(
        rows=rows,
        length=length,
        dtype=dtype,
        device=device,
        prompt_ids=prompt_ids.detach(),
        prompt_mask=prompt_mask.detach(),
        completion_ids=completion_ids.detach(),
        completion_mask=base_mask,
        mask_dtype=mask_dtype,
        logps=values,
        accumulation=accumulation,
        steps_per_generation=steps_per_generation,
        processes=processes,
        max_completion_length=max(int(spec.max_completion_length or length), length),
    )


def _synthetic_logps(rows: int, length: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Deterministic log-probs in [−2.9, −0.2] (no RNG)."""
    index = torch.arange(rows * length, dtype=torch.float64, device=device).reshape(rows, length)
    return (-0.2 - 2.7 * ((index * 0.6180339887) % 1.0)).to(dtype)


def _synthetic_ids(rows: int, length: int, device: torch.device) -> torch.Tensor:
    return (torch.arange(rows * length, device=device).reshape(rows, length) % 7 + 3).long()


def _lengths_mask(lengths: list[int], length: int, dtype: torch.dtype) -> torch.Tensor:
    positions = torch.arange(length)
    return torch.stack([(positions < max(0, min(n, length))).to(dtype) for n in lengths])


# ------------------------------------------------------------------------------------------ ratio levels


def ratio_levels(spec: GRPOSpec) -> tuple[float, ...]:
    """Importance ratios that put a token in every region of the configured objective, each at least ~5 %
    away from a boundary (so float32 rounding never moves a token across one).

    Clipped surrogate: below 1 − ε_low, inside on both sides of 1, exactly 1, above 1 + ε_high, between
    1 + ε_high and δ, past δ, past the dual-clip cap. cispo: both sides of ε_max. sapo/vespo: a wide spread.
    """
    low, high = 1.0 - spec.epsilon_low, 1.0 + spec.epsilon_high_effective
    if spec.loss_type in CLIPPED_SURROGATE_TYPES:
        levels = [(1.0 + low) / 2 if low > 0 else 0.5, 1.0, (1.0 + high) / 2]
        if low > 0.06:
            levels.insert(0, low * 0.7)
        if (
            spec.epsilon_high_effective != spec.epsilon_low
        ):  # between the two ε: tells ε_low from ε_high apart
            levels += [1.0 + (spec.epsilon_low + spec.epsilon_high_effective) / 2]
            if 1.0 - spec.epsilon_high_effective > 0:
                levels += [1.0 - (spec.epsilon_low + spec.epsilon_high_effective) / 2]
        if spec.delta is None:
            levels.append(high * 1.25)
        else:
            if spec.delta > high * 1.1:  # above the clip range, below δ
                levels.append((high + spec.delta) / 2)
            levels.append(max(spec.delta, high) * 1.3)
        if spec.dual_clip is not None:
            levels.append(spec.dual_clip * 1.3)
    elif spec.loss_type == "cispo":
        cap = spec.epsilon_high_effective
        levels = [0.6, 1.0, cap * 0.7, cap * 1.4]
    elif spec.loss_type == "sapo":
        levels = [0.4, 0.85, 1.0, 1.2, 2.2]
    else:  # vespo
        levels = [0.3, 0.8, 1.0, 1.3, 2.0]
    out: list[float] = []
    for level in levels:
        if level > 0 and all(abs(level - seen) > 1e-3 for seen in out):
            out.append(float(level))
    return tuple(out)


def _advantage(sign: int, row: int) -> float:
    if sign > 0:
        return 0.5 + 0.25 * (row % 4)
    if sign < 0:
        return -(0.6 + 0.2 * (row % 3))
    return 0.0


# ---------------------------------------------------------------------------------------- probe assembly


def _finish(
    name: str,
    purpose: str,
    base: _Base,
    spec: GRPOSpec,
    *,
    mask: torch.Tensor,
    log_ratio: torch.Tensor | None,
    advantages: list[float],
    accumulation: int | None = None,
    truncated: torch.Tensor | None = None,
    tool_mask: torch.Tensor | None = None,
    sampler_offset: torch.Tensor | None = None,
) -> ProbeBatch:
    """Assemble a probe from its mask, log-ratios (None = on-policy) and advantages; adds the tensors every
    probe needs for this spec (ref log-probs, entropies, sampler weights) and the normaliser inputs."""
    rows, length = mask.shape
    dtype, device = base.dtype, base.device
    logps = base.tile("logps", rows).to(dtype)
    effective = (mask != 0) if tool_mask is None else (mask != 0) & (tool_mask != 0)
    tensors: dict[str, torch.Tensor] = {
        "prompt_ids": base.tile("prompt_ids", rows),
        "prompt_mask": base.tile("prompt_mask", rows),
        "completion_ids": base.tile("completion_ids", rows),
        "completion_mask": mask.to(base.mask_dtype),
        "advantages": torch.tensor(advantages, dtype=dtype, device=device),
        "logps": logps,
    }
    if truncated is not None:
        tensors["truncated"] = truncated
    if tool_mask is not None:
        tensors["tool_mask"] = tool_mask.to(base.mask_dtype)
    if log_ratio is not None:
        garbage = torch.where(
            (torch.arange(rows * length, device=device).reshape(rows, length) % 2) == 0,
            MASKED_LOG_RATIO,
            -MASKED_LOG_RATIO,
        ).to(torch.float64)
        log_ratio = torch.where(effective, log_ratio.to(torch.float64), garbage)
        tensors["old_logps"] = (logps.to(torch.float64) - log_ratio).to(dtype)
    if spec.beta != 0.0:
        offsets = torch.tensor([-1.5, -0.4, 0.0, 0.3, 1.1], dtype=torch.float64, device=device)
        index = torch.arange(rows * length, device=device).reshape(rows, length) % offsets.numel()
        ref_offset = torch.where(effective, offsets[index], torch.full_like(offsets[index], 5.0))
        tensors["ref_logps"] = (logps.to(torch.float64) + ref_offset).to(dtype)
    tensors["entropies"] = _entropies(effective, dtype)
    if sampler_offset is not None:
        tensors["sampler_logps"] = (logps.to(torch.float64) + sampler_offset).to(dtype)
    if spec.sampler_is_correction:
        weights = torch.tensor([0.0, 0.6, 1.0, 1.8, 2.9], dtype=dtype, device=device)
        if spec.sampler_is_mode.startswith("sequence"):
            tensors["sampler_is_ratio"] = weights[
                torch.arange(rows, device=device) % weights.numel()
            ].unsqueeze(1)
        else:
            flat = torch.arange(rows * length, device=device).reshape(rows, length) % weights.numel()
            tensors["sampler_is_ratio"] = weights[flat]
    window = accumulation or base.accumulation
    tokens = int(effective.sum())
    meta: dict[str, Any] = {
        "gradient_accumulation_steps": window,
        "steps_per_generation": base.steps_per_generation,
        "num_processes": base.processes,
        # as if every micro-batch of the window carried 3 more loss tokens than this one (so a normaliser that
        # uses the local count instead of N is visible), over S micro-batches and P processes: N/P·K/S = (n+3)·K
        "num_items_in_batch": float((tokens + 3) * base.processes * base.steps_per_generation),
        "max_completion_length": base.max_completion_length,
    }
    return ProbeBatch(name=name, purpose=purpose, tensors=tensors, meta=meta)


def _entropies(valid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Distinct entropies 0.05, 0.081, ... in a fixed scrambled order; masked positions get MASKED_ENTROPY."""
    rows, length = valid.shape
    count = rows * length
    order = (torch.arange(count, dtype=torch.long) * 7919) % _coprime_modulus(count)
    values = (0.05 + 0.031 * order.to(torch.float64)).reshape(rows, length)
    return (
        torch.where(valid.cpu(), values, torch.full_like(values, MASKED_ENTROPY)).to(dtype).to(valid.device)
    )


def _coprime_modulus(count: int) -> int:
    """``count`` if 7919 permutes 0..count−1 modulo it (always, 7919 is prime, unless it divides count)."""
    return count if count % 7919 else count + 1


def _seq_log_ratio(levels: list[float], mask: torch.Tensor) -> torch.Tensor:
    """Token log-ratios whose masked row mean is log(level): ±0.05 deviations that cancel over the row."""
    rows, length = mask.shape
    out = torch.zeros(rows, length, dtype=torch.float64)
    for row in range(rows):
        valid = [t for t in range(length) if mask[row, t] != 0]
        for i, t in enumerate(valid):
            deviation = 0.0 if (i == len(valid) - 1 and len(valid) % 2) else (0.05 if i % 2 == 0 else -0.05)
            out[row, t] = math.log(levels[row]) + deviation
    return out


def _grid(base: _Base, spec: GRPOSpec) -> ProbeBatch:
    """Every ratio level paired with every advantage sign, on full rows."""
    levels = ratio_levels(spec)
    count, length = len(levels), base.length
    if spec.importance_sampling_level == "sequence":
        rows = max(base.rows, len(SIGNS) * count)
        mask = torch.ones(rows, length, dtype=base.mask_dtype)
        signs = [SIGNS[(r // count) % len(SIGNS)] for r in range(rows)]
        row_levels = [levels[r % count] for r in range(rows)]
        log_ratio = _seq_log_ratio(row_levels, mask)
    else:
        per_sign = math.ceil(count / length)
        needed = len(SIGNS) * per_sign
        rows = max(base.rows, needed)
        mask = torch.ones(rows, length, dtype=base.mask_dtype)
        signs, log_ratio = [], torch.zeros(rows, length, dtype=torch.float64)
        for r in range(rows):
            if r < needed:
                signs.append(SIGNS[r // per_sign])
                offset = (r % per_sign) * length
            else:
                signs.append(SIGNS[r % len(SIGNS)])
                offset = r
            for t in range(length):
                log_ratio[r, t] = math.log(levels[(offset + t) % count])
    if spec.loss_type == "vespo":  # a row whose summed log-ratio passes the clamp at 20 of the gamma weight
        mask = torch.cat([mask, torch.ones(1, length, dtype=base.mask_dtype)])
        log_ratio = torch.cat([log_ratio, torch.full((1, length), 21.0 / length + 0.5, dtype=torch.float64)])
        signs.append(1)
    advantages = [_advantage(s, r) for r, s in enumerate(signs)]
    return _finish(
        "ratio-grid",
        f"ratios {', '.join(f'{v:.3g}' for v in levels)} × advantages +/−/0",
        base,
        spec,
        mask=mask,
        log_ratio=log_ratio.to(base.device),
        advantages=advantages,
    )


def _mixed_log_ratio(mask: torch.Tensor, spec: GRPOSpec) -> torch.Tensor:
    levels = ratio_levels(spec)
    rows, length = mask.shape
    if spec.importance_sampling_level == "sequence":
        return _seq_log_ratio([levels[(r * 2 + 1) % len(levels)] for r in range(rows)], mask)
    flat = torch.arange(rows * length).reshape(rows, length)
    values = torch.tensor([math.log(v) for v in levels], dtype=torch.float64)
    return values[(flat + flat // length) % len(levels)]


def _masks(base: _Base, spec: GRPOSpec, *, tool_mask: bool) -> ProbeBatch:
    """Masked tokens carrying extreme ratios, an all-masked row, a one-token row, a truncated row and (when
    the loss takes one) a tool mask."""
    rows, length = max(base.rows, 5), base.length
    mask = base.tile("completion_mask", rows).to(base.mask_dtype)
    mask[0] = 0  # all masked
    mask[1] = 0
    mask[1, 0] = 1  # one token
    mask[2] = 1  # full length, no EOS: truncated
    truncated = torch.zeros(rows, dtype=torch.bool)
    truncated[2] = True
    if spec.mask_truncated_completions:
        mask[2] = 0  # the loss receives truncated rows zeroed (TRL zeroes them when the batch is built)
    tools = None
    if tool_mask and length >= 3:
        tools = torch.ones(rows, length, dtype=base.mask_dtype)
        mask[3] = 1
        tools[3, 1 : length - 1] = 0  # tool output inside the completion
    signs = [SIGNS[r % len(SIGNS)] if r >= 3 else (1, -1, -1)[r] for r in range(rows)]
    advantages = [_advantage(s, r) for r, s in enumerate(signs)]
    return _finish(
        "masks",
        "padding with extreme ratios, an all-masked row, a one-token row, a truncated row"
        + (", tool tokens" if tools is not None else ""),
        base,
        spec,
        mask=mask.to(base.device),
        log_ratio=_mixed_log_ratio(mask, spec).to(base.device),
        advantages=advantages,
        truncated=truncated.to(base.device),
        tool_mask=None if tools is None else tools.to(base.device),
    )


def _normaliser(base: _Base, spec: GRPOSpec, *, accumulation: int, name: str, purpose: str) -> ProbeBatch:
    """Rows of very different lengths (1 … T), so every normaliser (per row, per token, per B·L_max, global N)
    gives a different loss and gradient."""
    length = base.length
    pattern = [length, 1, max(1, length // 2), length, min(2, length), max(1, length - 1)]
    rows = max(base.rows, len(pattern))
    mask = _lengths_mask([pattern[r % len(pattern)] for r in range(rows)], length, base.mask_dtype)
    signs = [(1, -1, 1, -1, 0, 1)[r % 6] for r in range(rows)]
    return _finish(
        name,
        purpose,
        base,
        spec,
        mask=mask.to(base.device),
        log_ratio=_mixed_log_ratio(mask, spec).to(base.device),
        advantages=[_advantage(s, r) for r, s in enumerate(signs)],
        accumulation=accumulation,
    )


def _on_policy(base: _Base, spec: GRPOSpec) -> ProbeBatch:
    rows = base.rows
    mask = base.completion_mask.clone()
    if int((mask != 0).sum()) == 0:
        mask = torch.ones_like(mask)
    signs = [SIGNS[r % len(SIGNS)] for r in range(rows)]
    return _finish(
        "on-policy",
        "no old log-probs (ρ ≡ 1): the loss is ≈ 0 but its gradient is not",
        base,
        spec,
        mask=mask,
        log_ratio=None,
        advantages=[_advantage(s, r) for r, s in enumerate(signs)],
    )


def _off_policy(base: _Base, spec: GRPOSpec) -> ProbeBatch:
    """Rows whose sampler/old divergence lies below and above the off-policy threshold, for each sign of A."""
    threshold = float(spec.off_policy_mask_threshold or 0.0)
    spread = 0.2 + 0.5 * abs(threshold)
    divergences = [threshold - spread, threshold + spread]
    rows, length = max(base.rows, 6), base.length
    mask = torch.ones(rows, length, dtype=base.mask_dtype)
    signs = [SIGNS[r % len(SIGNS)] for r in range(rows)]
    offset = torch.tensor(
        [[divergences[(r // len(SIGNS)) % 2]] * length for r in range(rows)], dtype=torch.float64
    )
    inside = math.log(1.0 + spec.epsilon_high_effective / 4) if spec.loss_type != "cispo" else 0.0
    return _finish(
        "off-policy-mask",
        f"sampler/old divergence {divergences[0]:.3g} and {divergences[1]:.3g} around the threshold "
        f"{threshold:.3g}, advantages +/−/0",
        base,
        spec,
        mask=mask.to(base.device),
        log_ratio=torch.full((rows, length), inside, dtype=torch.float64).to(base.device),
        advantages=[_advantage(s, r) for r, s in enumerate(signs)],
        sampler_offset=offset.to(base.device),
    )


def build_probes(
    spec: GRPOSpec,
    batch: Any = None,
    *,
    tool_mask: bool = False,
    entropy_quantile: bool = True,
) -> list[ProbeBatch]:
    """The probe micro-batches for ``spec``, built from ``batch`` (a captured ``TraceStep`` or a mapping of
    canonical tensors) or from scratch.

    ``tool_mask``: include a tool mask (only for loss code that takes one). ``entropy_quantile=False`` gives
    every loss token the same entropy, so the top-entropy quantile keeps them all (for loss code whose quantile
    spans several processes, which the reference cannot see).
    """
    base = _base(batch, spec)
    probes = [_on_policy(base, spec), _grid(base, spec), _masks(base, spec, tool_mask=tool_mask)]
    probes.append(
        _normaliser(
            base,
            spec,
            accumulation=base.accumulation,
            name="normaliser",
            purpose=f"rows of length 1…{base.length}, K={base.accumulation}, S={base.steps_per_generation}, "
            f"P={base.processes}",
        )
    )
    if base.accumulation > 1:
        probes.append(
            _normaliser(
                base,
                spec,
                accumulation=1,
                name="normaliser-short-window",
                purpose="a last accumulation window shorter than gradient_accumulation_steps (K=1)",
            )
        )
    if spec.off_policy_mask_threshold is not None:
        probes.append(_off_policy(base, spec))
    if not entropy_quantile:  # equal entropies: every rank's quantile keeps every loss token
        for probe in probes:
            valid = probe_loss_mask(probe, spec) != 0
            entropies = probe.tensors["entropies"]
            probe.tensors["entropies"] = torch.where(valid, torch.ones_like(entropies), entropies)
    return probes


def probe_loss_mask(probe: ProbeBatch, spec: GRPOSpec) -> torch.Tensor:
    """The loss mask (M1) of a probe, float64: completion mask · tool mask · (1 − truncated if masked)."""
    from grpo_check.reference.loss import loss_mask

    return loss_mask(
        probe.tensors["completion_mask"],
        probe.tensors.get("tool_mask"),
        probe.tensors.get("truncated"),
        spec.mask_truncated_completions,
    )
