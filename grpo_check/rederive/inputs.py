"""What a re-derivation needs besides the step's own tensors, gathered from the step and its trace.

Some inputs live on the step's metadata (written by the capture adapter): every EOS id by source, the
optimizer step at which the batch was generated, the loss-token count of the whole generation batch. For a
trace recorded without them, the same facts are joined from the trace's other steps: the ``generation`` step
with the same ``meta["generation"]`` says when the batch was generated, and the micro-batches of one
generation, followed by ``meta["global_rows"]``, hold every row's loss mask.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch

from grpo_check.rederive.derive import loss_tokens_per_row, normalise_eos_ids
from grpo_check.trace.model import Trace, TraceStep

EOS_SOURCES_KEY = "eos_token_id_sources"
"""Step/manifest meta key: ``{"tokenizer": [...], "generation_config": [...], "trainer": [...]}``."""
GENERATION_STEP_KEY = "generation_step"
"""Step meta key: the optimizer step (``state.global_step``) at which this micro-batch's rows were generated."""
GENERATION_LOSS_TOKENS_KEY = "generation_loss_tokens"
"""Step meta key: Σ completion_mask · tool_mask over the whole generation batch, all processes (N re-derived)."""


@dataclasses.dataclass(frozen=True)
class EosIds:
    """EOS ids by source; ``all`` is their union (every id that ends a completion)."""

    by_source: dict[str, list[int]]

    @property
    def all(self) -> list[int]:
        return normalise_eos_ids(*self.by_source.values())

    @property
    def ends(self) -> list[int]:
        """The ids that end a completion: the tokenizer's and the generation config's when recorded (what
        generation stops at; the trainer's own list is what is being checked), else the trainer's."""
        independent = [
            ids for name, ids in self.by_source.items() if name in ("tokenizer", "generation_config")
        ]
        return normalise_eos_ids(*independent) if independent else self.all

    @property
    def independent(self) -> bool:
        """True when the tokenizer's or the generation config's ids were recorded (not only the trainer's)."""
        return any(name in self.by_source for name in ("tokenizer", "generation_config"))


@dataclasses.dataclass(frozen=True)
class LossTokens:
    """N re-derived for a step's generation batch: ``count`` (None when not derivable) and where it came from,
    or why it could not be derived."""

    count: float | None
    source: str


def eos_ids_of(step: TraceStep, trace: Trace | None = None) -> EosIds | None:
    """Every EOS id recorded for ``step``: ``meta["eos_token_id_sources"]`` (per source) plus
    ``meta["eos_token_ids"]`` (the trainer's list), and the manifest's where the step has none."""
    by_source: dict[str, list[int]] = {}
    manifest: Mapping[str, Any] = trace.manifest if trace is not None else {}
    for holder in (manifest, step.meta):
        sources = holder.get(EOS_SOURCES_KEY)
        if isinstance(sources, Mapping):
            for name, ids in sources.items():
                try:
                    by_source[str(name)] = normalise_eos_ids(ids)
                except (TypeError, ValueError):
                    continue
        declared = holder.get("eos_token_ids")
        if declared is not None:
            try:
                by_source.setdefault("trainer", [])
                by_source["trainer"] = normalise_eos_ids(by_source["trainer"], declared)
            except (TypeError, ValueError):
                pass
    by_source = {name: ids for name, ids in by_source.items() if ids}
    return EosIds(by_source) if by_source else None


def whole(value: Any) -> int | None:
    """``value`` as an int when it is a whole number (an int, a numpy integer, a 0-d tensor), else ``None``
    (a bool, a string, a fraction: a meta value of the wrong kind is treated as not recorded)."""
    if value is None or isinstance(value, bool | str):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if number.is_integer() else None


@dataclasses.dataclass
class _TraceIndex:
    generation_steps: dict[int, TraceStep]
    micro_batches: dict[int, list[TraceStep]]


_INDEX_CACHE: list[tuple[Trace, int, _TraceIndex]] = []


def _index(trace: Trace) -> _TraceIndex:
    for cached_trace, length, index in _INDEX_CACHE:
        if cached_trace is trace and length == len(trace.steps):
            return index
    generation_steps: dict[int, TraceStep] = {}
    micro_batches: dict[int, list[TraceStep]] = {}
    for step in trace.steps:
        generation = whole(step.meta.get("generation"))
        if generation is None:
            continue
        if step.meta.get("scope") == "generation":
            generation_steps.setdefault(generation, step)
        elif step.has("completion_mask"):
            micro_batches.setdefault(generation, []).append(step)
    index = _TraceIndex(generation_steps, micro_batches)
    _INDEX_CACHE[:] = [(trace, len(trace.steps), index)]
    return index


def generation_step_of(step: TraceStep, trace: Trace | None = None) -> int | None:
    """The optimizer step at which ``step``'s rows were generated: ``meta["generation_step"]``, else the
    ``step`` of the trace's generation step with the same ``meta["generation"]``."""
    recorded = whole(step.meta.get(GENERATION_STEP_KEY))
    if recorded is not None:
        return recorded
    if step.meta.get("scope") == "generation":
        return whole(step.meta.get("step"))
    generation = whole(step.meta.get("generation"))
    if trace is None or generation is None:
        return None
    source = _index(trace).generation_steps.get(generation)
    return None if source is None else whole(source.meta.get("step"))


def generation_loss_tokens(step: TraceStep, trace: Trace | None = None) -> LossTokens:
    """N re-derived from loss masks: ``meta["generation_loss_tokens"]`` (summed at generation by the adapter),
    else the sum over every row of the generation batch found in the trace's micro-batches (each row once,
    followed by ``meta["global_rows"]``), else this step's own masks when it is the whole generation batch
    (one step per generation, one process)."""
    recorded = step.meta.get(GENERATION_LOSS_TOKENS_KEY)
    if isinstance(recorded, int | float) and not isinstance(recorded, bool):
        return LossTokens(float(recorded), "the loss masks of the generation batch, summed at generation")
    generation = whole(step.meta.get("generation"))
    if trace is not None and generation is not None:
        return _joined_loss_tokens(step, trace, generation)
    spg = whole(step.meta.get("steps_per_generation"))
    processes = whole(step.meta.get("num_processes"))
    if spg == 1 and processes == 1 and step.has("completion_mask"):
        count = float(loss_tokens_per_row(step["completion_mask"], step.get("tool_mask")).sum())
        return LossTokens(count, "this micro-batch's loss masks (it is the whole generation batch)")
    return LossTokens(
        None,
        "the generation batch's loss masks are not on this step (meta generation_loss_tokens) and no trace "
        "holds its other micro-batches (meta generation + global_rows)",
    )


def _joined_loss_tokens(step: TraceStep, trace: Trace, generation: int) -> LossTokens:
    index = _index(trace)
    gen_step = index.generation_steps.get(generation)
    total_rows = None
    if gen_step is not None and gen_step.has("group_index"):
        total_rows = int(gen_step["group_index"].numel())
    per_row: dict[int, float] = {}
    for micro in index.micro_batches.get(generation, []):
        rows = micro.meta.get("global_rows")
        if not isinstance(rows, list):
            continue
        counts = loss_tokens_per_row(micro["completion_mask"], micro.get("tool_mask"))
        if len(rows) != counts.numel():
            continue
        for row, count in zip(rows, counts.tolist(), strict=True):
            per_row.setdefault(int(row), float(count))
    if total_rows is None:
        return LossTokens(
            None,
            f"generation {generation}'s row count is not in the trace (its generation step with group_index)",
        )
    missing = [row for row in range(total_rows) if row not in per_row]
    if missing:
        return LossTokens(
            None,
            f"{len(missing)} of generation {generation}'s {total_rows} rows are in no captured micro-batch "
            "(capture every micro-batch, or record meta generation_loss_tokens)",
        )
    count = float(sum(per_row[row] for row in range(total_rows)))
    return LossTokens(
        count, f"the loss masks of all {total_rows} rows of generation {generation} in the trace"
    )


def tensor_or_none(step: TraceStep, name: str) -> torch.Tensor | None:
    value = step.get(name)
    return value if isinstance(value, torch.Tensor) else None
