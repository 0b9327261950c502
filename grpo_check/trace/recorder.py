"""``Recorder``: capture a trace from a hand-written GRPO loop with a few added lines.

Example (a complete loop on a tiny model lives in ``docs/traces.md``)::

    >>> import torch
    >>> from grpo_check import Recorder, GRPOSpec
    >>> rec = Recorder(None, spec=GRPOSpec(num_generations=2), trainer="doctest")
    >>> logits = torch.randn(2, 3, requires_grad=True)
    >>> with rec.step(step=0) as s:
    ...     s.record(completion_mask=torch.ones(2, 3, dtype=torch.long), group_index=torch.tensor([0, 0]))
    ...     logps = s.watch("logps", torch.log_softmax(logits, -1))
    ...     loss = -(logps * torch.tensor([[1.0], [-1.0]])).mean()
    ...     s.record(loss=loss)
    ...     loss.backward()
    >>> trace = rec.close()
    >>> sorted(trace.steps[0].tensors)
    ['completion_mask', 'group_index', 'logps', 'logps_grad', 'loss']

When is a step written? At the end of its ``with`` block if every watched tensor's gradient has arrived;
otherwise (``loss.backward()`` called after the block) as soon as the last gradient arrives, and at the
latest when a step with another ``step`` number starts, or on :meth:`Recorder.close`. A gradient that never
arrived is listed in the step's ``meta["missing_grads"]``; it is never a failure.
"""

from __future__ import annotations

import contextlib
import operator
import os
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from grpo_check._kinds import is_whole_number
from grpo_check.findings import STAGES, InputError
from grpo_check.trace.io import (
    INT_LIST_META_KEYS,
    INT_META_KEYS,
    TraceWriter,
    batch_rows,
    build_manifest,
    meta_type_problems,
    text_row_problems,
    to_jsonable,
)
from grpo_check.trace.model import TENSOR_STAGE, Trace, TraceStep

__all__ = ["Recorder", "StepRecorder"]


def _capture(name: str, value: Any):
    """Detached CPU copy of ``value`` (tensor, number, list or numpy array)."""
    import torch

    if isinstance(value, torch.Tensor):
        if value.is_meta:  # no data to record (a model built on the meta device)
            raise InputError("cannot record a tensor on the meta device: it holds no values", field=name)
        if value.layout is not torch.strided:  # sparse / nested: traces hold dense tensors (safetensors)
            raise InputError(f"cannot record a {value.layout} tensor; pass it .to_dense()", field=name)
        return value.detach().to("cpu", copy=True).contiguous()
    try:
        return torch.as_tensor(value).clone()
    except Exception as exc:
        raise InputError(f"cannot record a {type(value).__name__} as a tensor ({exc})", field=name) from None


def _text_rows(name: str, text: Iterable[str] | None) -> list[str] | None:
    """``text`` as a list with one string per row; a bare string (one row per character) is refused."""
    if text is None:
        return None
    if isinstance(text, (str, bytes)):
        raise InputError("give a list with one string per row, not a single string", field=name)
    return [str(s) for s in text]


def _check_text_rows(
    tensors: Mapping[str, Any], completion_text: list[str] | None, prompt_text: list[str] | None
) -> None:
    """Refuse texts whose length differs from the step's rows (B), or, while B is unknown, each other's."""
    texts = {"completion_text": completion_text, "prompt_text": prompt_text}
    if batch_rows(tensors) is None:
        if (
            completion_text is not None
            and prompt_text is not None
            and len(completion_text) != len(prompt_text)
        ):
            raise InputError(
                f"has {len(prompt_text)} entries but completion_text has {len(completion_text)}; "
                "record one string per row in both",
                field="prompt_text",
            )
        return
    for field, message in text_row_problems(tensors, texts):
        raise InputError(f"{message} of this step's tensors; record one string per row", field=field)


def _coordinate(name: str, value: Any) -> int:
    """A step coordinate (``step``, ``micro_batch``, ``rank``) as an int; a non-whole number is refused."""
    if not isinstance(value, bool):
        with contextlib.suppress(TypeError):
            return operator.index(value)  # int, numpy and 0-d torch integers
        if isinstance(value, float) and value.is_integer():
            return int(value)
    raise InputError(f"must be an integer, got {value!r}", field=name)


def _check_step_meta(meta: Mapping[str, Any]) -> None:
    """Refuse step metadata the checks read as integers but that holds another type (e.g. a string)."""
    typed = {k: to_jsonable(v) for k, v in meta.items() if k in INT_META_KEYS or k in INT_LIST_META_KEYS}
    for key, message in meta_type_problems(typed):
        raise InputError(message, field=key)


def _check_stages(stages: Iterable[str]) -> frozenset[str]:
    """``stages`` as a frozenset; a bare string or an unknown stage name is refused."""
    if isinstance(stages, str):
        raise InputError(
            f"give a set of stage names, e.g. {{{stages!r}}}, not a single string", field="stages"
        )
    chosen = frozenset(stages)
    unknown = sorted(str(s) for s in chosen - set(STAGES))
    if unknown:
        raise InputError(
            f"unknown stage(s) {', '.join(map(repr, unknown))}; valid stages: {', '.join(STAGES)}",
            field="stages",
        )
    return chosen


class StepRecorder:
    """Collects one micro-batch's tensors, text and metadata; handed out by :meth:`Recorder.step`.

    Methods are no-ops when the step is not sampled (``Recorder(every=k)``), so the loop code never branches.
    """

    def __init__(self, recorder: Recorder, meta: dict[str, Any], *, active: bool, sequence: int = 0):
        self._recorder = recorder
        self.active = active
        self.sequence = sequence  # recording order, kept on disk as the step's index
        self.meta: dict[str, Any] = meta
        self.tensors: dict[str, Any] = {}
        self.completion_text: list[str] | None = None
        self.prompt_text: list[str] | None = None
        self._pending_grads: set[str] = set()
        self._hooks: list[Any] = []
        self._exited = False
        self._flushed = False
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------------------------ recording
    def _accept(self, name: str) -> bool:
        if name not in TENSOR_STAGE and not name.startswith("extra."):
            raise InputError(
                "unknown tensor name; use a canonical name from grpo_check.trace.model.TENSOR_STAGE, or "
                "record it with record_extra()",
                field=name,
            )
        stages = self._recorder.stages
        return stages is None or TENSOR_STAGE.get(name, "extra") in stages or name.startswith("extra.")

    def record(self, **tensors: Any) -> None:
        """Record named tensors (canonical names): detached, copied to CPU, so later in-place edits don't leak.

        ``None`` values are skipped, so ``s.record(ref_logps=ref_logps)`` works when there is no ref model.
        """
        if not self.active:
            return
        self._check_open("record")
        captured = {
            name: _capture(name, value)
            for name, value in tensors.items()
            if value is not None and self._accept(name)
        }
        with self._lock:
            _check_text_rows({**self.tensors, **captured}, self.completion_text, self.prompt_text)
            self.tensors.update(captured)

    def _check_open(self, what: str) -> None:
        if self._exited:
            raise InputError(
                f"{what}() after the `with rec.step(...)` block ended; call it inside the block "
                "(only watched gradients may arrive later)",
                field=what,
            )

    def record_extra(self, **tensors: Any) -> None:
        """Record non-canonical tensors; they are stored as ``extra.<name>`` and never validated."""
        self.record(**{f"extra.{name}": value for name, value in tensors.items()})

    def record_text(
        self, completion_text: Iterable[str] | None = None, prompt_text: Iterable[str] | None = None
    ) -> None:
        """Record decoded completions (and prompts), one string per row.

        A text whose entry count differs from the rows of the step's tensors raises
        :class:`~grpo_check.findings.InputError`, now or when a tensor recorded later fixes the row count.
        """
        if not self.active:
            return
        self._check_open("record_text")
        completion = _text_rows("completion_text", completion_text)
        prompt = _text_rows("prompt_text", prompt_text)
        with self._lock:
            completion = self.completion_text if completion is None else completion
            prompt = self.prompt_text if prompt is None else prompt
            _check_text_rows(self.tensors, completion, prompt)
            self.completion_text, self.prompt_text = completion, prompt

    def watch(self, name: str, tensor: Any) -> Any:
        """Record ``tensor`` now and its gradient ``∂loss/∂tensor`` as ``<name>_grad`` during backward.

        Returns ``tensor`` unchanged, so it can wrap an expression: ``logps = s.watch("logps", compute())``.
        Several ``backward()`` calls through the same tensor add up, like ``.grad`` does.
        """
        if not self.active:
            return tensor
        self.record(**{name: tensor})
        grad_name = f"{name}_grad"
        if grad_name not in TENSOR_STAGE and not grad_name.startswith("extra."):
            grad_name = f"extra.{grad_name}"
        if not self._accept(grad_name):
            return tensor
        if not getattr(tensor, "requires_grad", False):
            self.meta.setdefault("watch_notes", []).append(
                f"{name}: tensor does not require grad, {grad_name} not captured"
            )
            return tensor

        def hook(grad, _grad_name=grad_name):
            self._on_grad(_grad_name, grad)
            return None

        with self._lock:
            self._pending_grads.add(grad_name)
        self._hooks.append(tensor.register_hook(hook))
        return tensor

    # --------------------------------------------------------------------------------------- flushing
    def _on_grad(self, grad_name: str, grad: Any) -> None:
        captured = _capture(grad_name, grad)
        with self._lock:
            if self._flushed:
                self._recorder._late_grads += 1
                return
            previous = self.tensors.get(grad_name)
            self.tensors[grad_name] = captured if previous is None else previous + captured
            self._pending_grads.discard(grad_name)
            ready = self._exited and not self._pending_grads
        if ready:
            self._recorder._flush(self)

    def _exit(self, error: BaseException | None) -> None:
        with self._lock:
            self._exited = True
            if error is not None:
                self.meta["error"] = f"{type(error).__name__}: {error}"
            ready = not self._pending_grads
        if ready:
            self._recorder._flush(self)

    def _take(self) -> TraceStep | None:
        """Mark flushed and return the step (``None`` when already flushed)."""
        with self._lock:
            if self._flushed:
                return None
            self._flushed = True
            if self._pending_grads:
                self.meta["missing_grads"] = sorted(self._pending_grads)
            hooks, self._hooks = self._hooks, []
        for handle in hooks:
            handle.remove()
        return TraceStep(
            tensors=dict(self.tensors),
            completion_text=self.completion_text,
            prompt_text=self.prompt_text,
            meta=dict(self.meta),
        )


class Recorder:
    """Record a trace from any training loop (see the module docstring and ``docs/architecture.md``).

    Args:
        out_dir: trace directory (streamed to as steps complete; ``None`` = in memory only).
        spec: the algorithm configuration (:class:`grpo_check.GRPOSpec` or its dict).
        trainer: a name for the trainer/loop.
        trainer_config: the raw trainer configuration (JSON-able dict), kept verbatim in the manifest.
        seeds: anything JSON-able (an int, a dict of seeds).
        every: record one optimizer step in ``every`` (by ``step`` number); other steps are no-ops.
        stages: record only tensors of these stages (e.g. ``{"batch", "advantages", "grad"}``; see
            :data:`grpo_check.findings.STAGES`; an unknown name raises ``InputError``); ``None`` = all.
        in_memory: keep steps in memory so :meth:`close` returns them (set ``False`` for long runs on disk).
        overwrite: allow writing into a directory that already holds a trace (its files are replaced).
    """

    def __init__(
        self,
        out_dir: str | os.PathLike[str] | None = None,
        *,
        spec: Any = None,
        trainer: str = "custom",
        trainer_config: Mapping[str, Any] | None = None,
        seeds: Any = None,
        every: int = 1,
        stages: Iterable[str] | None = None,
        in_memory: bool = True,
        overwrite: bool = False,
        notes: str | None = None,
    ):
        if not is_whole_number(every) or every < 1:
            raise InputError(f"must be a whole number >= 1, got {every!r}", field="every")
        for name, flag in (("overwrite", overwrite), ("in_memory", in_memory)):
            if not isinstance(flag, bool):  # "no" would read as true, and overwrite deletes a trace
                raise InputError(f"must be True or False, got {flag!r}", field=name)
        if out_dir is not None and not os.fspath(out_dir):
            raise InputError(
                "is empty; give a directory name (or None to keep the trace in memory)", field="out_dir"
            )
        if out_dir is None and not in_memory:
            raise InputError("with out_dir=None the trace must be kept in memory", field="in_memory")
        from grpo_check.config import GRPOSpec

        if isinstance(spec, Mapping):
            spec = GRPOSpec.from_dict(dict(spec), strict=True)
        elif spec is not None and not isinstance(spec, GRPOSpec):
            raise InputError(
                f"must be a GRPOSpec or a dict of its fields, got {type(spec).__name__}", field="spec"
            )
        self.spec = spec
        self.every = every
        self.stages = _check_stages(stages) if stages is not None else None
        self.in_memory = in_memory
        self.manifest = build_manifest(
            trainer=trainer, spec=spec, trainer_config=trainer_config, seeds=seeds, notes=notes
        )
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self._writer = TraceWriter(self.out_dir, overwrite=overwrite) if self.out_dir is not None else None
        if self._writer is not None:
            self._writer.write_manifest(self.manifest)  # a crashed run still has a loadable manifest
        self._steps: list[tuple[int, TraceStep]] = []  # (recording order, step), appended as flushed
        self._open: list[StepRecorder] = []
        self._lock = threading.RLock()
        self._closed = False
        self._late_grads = 0
        self._count = 0

    # ------------------------------------------------------------------------------------------ public
    @contextlib.contextmanager
    def step(
        self, step: int | None = None, micro_batch: int = 0, rank: int = 0, **meta: Any
    ) -> Iterator[StepRecorder]:
        """Capture one micro-batch. Extra keyword arguments go into the step metadata.

        Earlier steps still waiting for a watched gradient are written first if they belong to another
        optimizer step (their backward must have run by now). Micro-batches of the *same* step keep waiting,
        so gradient accumulation that calls ``backward()`` once on the summed loss after the last
        micro-batch still lands every micro-batch's gradient.
        """
        if self._closed:
            raise InputError("Recorder is closed; create a new one", field="step")
        step_number = self._count if step is None else _coordinate("step", step)
        coordinates = {
            name: None if value is None else _coordinate(name, value)
            for name, value in (("micro_batch", micro_batch), ("rank", rank))
        }
        _check_step_meta(meta)
        self.flush_pending(except_step=step_number)
        self._count += 1
        active = step_number % self.every == 0
        recorder = StepRecorder(
            self,
            {"step": step_number, **coordinates, **meta},
            active=active,
            sequence=self._count - 1,
        )
        if active:
            with self._lock:
                self._open.append(recorder)
        try:
            yield recorder
        except BaseException as exc:
            if active:
                recorder._exit(exc)
            raise
        else:
            if active:
                recorder._exit(None)

    def flush_pending(self, *, except_step: int | None = None) -> None:
        """Write every step whose ``with`` block has ended, even if a watched gradient never arrived
        (those of optimizer step ``except_step`` excepted)."""
        with self._lock:
            waiting = [
                r
                for r in self._open
                if r._exited and (except_step is None or r.meta.get("step") != except_step)
            ]
        for recorder in waiting:
            self._flush(recorder)

    def close(self) -> Trace:
        """Flush everything, write the final manifest, and return the trace (steps only if ``in_memory``)."""
        with self._lock:
            open_steps = list(self._open)
        for recorder in open_steps:
            self._flush(recorder)
        self.manifest["num_steps"] = self.num_steps
        if self._late_grads:
            self.manifest["notes"] = (
                (self.manifest.get("notes") or "")
                + f" {self._late_grads} gradient(s) arrived after their step was written and were dropped."
            ).strip()
        if self._writer is not None and not self._closed:
            self._writer.close(self.manifest)
        self._closed = True
        return Trace(manifest=to_jsonable(dict(self.manifest)), steps=self._ordered_steps())

    @property
    def num_steps(self) -> int:
        return self._writer.num_steps if self._writer is not None else len(self._steps)

    @property
    def trace(self) -> Trace:
        """The steps flushed so far (in memory), with the current manifest."""
        return Trace(manifest=dict(self.manifest), steps=self._ordered_steps())

    def _ordered_steps(self) -> list[TraceStep]:
        return [step for _, step in sorted(self._steps, key=lambda item: item[0])]

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------------------------------- internal
    def _flush(self, recorder: StepRecorder) -> None:
        step = recorder._take()
        with self._lock:
            if recorder in self._open:
                self._open.remove(recorder)
            if step is None:
                return
            if self._writer is not None:
                self._writer.write_step(step, index=recorder.sequence)
            dtypes = self.manifest.setdefault("dtypes", {})
            for name, value in step.tensors.items():
                dtypes.setdefault(name, str(value.dtype).removeprefix("torch."))
            if self.in_memory:
                self._steps.append((recorder.sequence, step))
