"""Writing traces: :class:`TraceWriter` streams a trace one step at a time (each step complete or absent on
disk), :func:`save_trace` writes a whole :class:`~grpo_check.trace.model.Trace`."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from grpo_check.findings import InputError
from grpo_check.trace.files import OutputPathError, atomic_write_bytes, atomic_write_text
from grpo_check.trace.format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST_FILE,
    STEP_FORMAT_NAME,
    STEPS_DIR,
    _dtype_name,
    build_manifest,
    library_versions,
    step_entry_name,
    to_jsonable,
    utc_now,
)
from grpo_check.trace.model import TENSOR_STAGE, Trace, TraceStep
from grpo_check.trace.validate import _check_name, text_row_problems, validate_step_tensors


def _tensor_to_cpu_contiguous(name: str, value: Any):
    import torch

    if not isinstance(value, torch.Tensor):
        try:
            value = torch.as_tensor(value)
        except Exception as exc:
            raise InputError(
                f"cannot store a {type(value).__name__} as a tensor ({exc})", field=name
            ) from None
    return value.detach().to("cpu").contiguous().clone()


class TraceWriter:
    """Streams a trace to a directory: manifest first, then one step at a time, each write atomic.

    Each step reaches the disk as it is appended: its ``.safetensors`` then its ``.json`` (the step's commit
    record), each written to a temporary file and renamed into place, so a step on disk is complete or
    absent. Until :meth:`close`, the manifest says ``"complete": false``: a run killed half-way leaves a
    trace that loads with every step it finished and a problem saying the run did not close it.

    >>> import tempfile, torch
    >>> from grpo_check.trace.reader import load_trace
    >>> writer = TraceWriter.open(tempfile.mkdtemp(), {"trainer": "demo"}, overwrite=True)
    >>> writer.append_step(TraceStep(tensors={"loss": torch.tensor(0.5)}, meta={"step": 0}))
    '000000-mb00-r0'
    >>> load_trace(writer.path).problems[0].endswith("the run did not close this trace (interrupted or crashed?): 1 complete step(s) read")
    True
    >>> writer.close()
    >>> load_trace(writer.path).problems
    []
    """

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], manifest: Mapping[str, Any], *, overwrite: bool = False
    ) -> TraceWriter:
        """A writer whose directory (created now: an unwritable one fails here, before any work) holds the
        manifest, marked not complete until :meth:`close`."""
        writer = cls(path, overwrite=overwrite)
        writer.write_manifest(manifest)
        return writer

    def append_step(self, step: TraceStep, *, index: int | None = None) -> str:
        """Write one step now (complete or absent on disk); returns its entry name."""
        if self._closed:
            raise InputError(
                "this trace was closed; open a new TraceWriter to write more steps", source=str(self.path)
            )
        return self.write_step(step, index=index)

    def close(self, manifest: Mapping[str, Any] | None = None) -> None:
        """Rewrite the manifest (``manifest`` if given) with the step count and ``"complete": true``."""
        self._closed = True
        self.write_manifest(self._manifest if manifest is None else manifest)

    def __init__(self, path: str | os.PathLike[str], *, overwrite: bool = False):
        self.path = Path(path)
        self.steps_dir = self.path / STEPS_DIR
        if self.path.exists() and not self.path.is_dir():
            raise InputError("trace output path exists and is not a directory", source=str(self.path))
        existing = self._existing_files()
        if existing and not overwrite:
            raise InputError(
                "directory already holds a trace; choose a new directory or pass overwrite=True",
                source=str(self.path),
            )
        for old in existing:
            old.unlink()
        try:
            self.steps_dir.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise OutputPathError(
                "cannot create the trace directory: a parent of this path is a file", source=str(self.path)
            ) from None
        except OSError as exc:
            raise OutputPathError(
                f"cannot create the trace directory: {exc.strerror or exc}", source=str(self.path)
            ) from None
        self._names: set[str] = set()
        self._count = 0
        self.dtypes: dict[str, str] = {}
        self._manifest: dict[str, Any] = {}
        self._closed = False

    def _existing_files(self) -> list[Path]:
        files = [self.path / MANIFEST_FILE] if (self.path / MANIFEST_FILE).exists() else []
        if self.steps_dir.is_dir():
            files += [p for p in self.steps_dir.iterdir() if p.suffix in (".json", ".safetensors")]
        return files

    @property
    def num_steps(self) -> int:
        return self._count

    def write_manifest(self, manifest: Mapping[str, Any]) -> None:
        """Write (or rewrite) ``manifest.json``; missing format keys and versions are filled in."""
        full = dict(manifest)
        full.setdefault("format", FORMAT_NAME)
        full.setdefault("format_version", FORMAT_VERSION)
        full.setdefault("versions", library_versions())
        full.setdefault("created", utc_now())
        merged_dtypes = dict(full.get("dtypes") or {})
        merged_dtypes.update(self.dtypes)
        full["dtypes"] = merged_dtypes
        full["num_steps"] = self._count
        full["complete"] = self._closed
        self._manifest = full
        atomic_write_text(self.path / MANIFEST_FILE, json.dumps(to_jsonable(full), indent=2) + "\n")

    def write_step(self, step: TraceStep, *, index: int | None = None) -> str:
        """Write one step (``.safetensors`` then ``.json``); returns its entry name.

        ``index`` is the step's position in recording order (default: the order of writing); readers sort
        steps by it, so a step written late (waiting for its gradient) still loads in its place.
        """
        from safetensors.torch import save as safetensors_save

        tensors = {name: _tensor_to_cpu_contiguous(name, value) for name, value in step.tensors.items()}
        for name in tensors:
            _check_name(name, source=None)
        order = self._count if index is None else int(index)
        entry = step_entry_name(step.meta, order)
        if entry in self._names:
            suffix = 1
            while f"{entry}-{suffix}" in self._names:
                suffix += 1
            entry = f"{entry}-{suffix}"
        self._names.add(entry)
        _warn_if_unloadable(entry, tensors, step)
        blob = safetensors_save(tensors, metadata={"format": STEP_FORMAT_NAME}) if tensors else b""
        tensor_file = f"{entry}.safetensors"
        if tensors:
            atomic_write_bytes(self.steps_dir / tensor_file, blob)
        listing = {
            name: {
                "dtype": _dtype_name(t.dtype),
                "shape": list(t.shape),
                "nbytes": t.numel() * t.element_size(),
                "stage": TENSOR_STAGE.get(name, "extra"),
            }
            for name, t in tensors.items()
        }
        for name, info in listing.items():
            self.dtypes.setdefault(name, info["dtype"])
        record = {
            "format": STEP_FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "index": order,
            "meta": to_jsonable(step.meta),
            "completion_text": list(step.completion_text) if step.completion_text is not None else None,
            "prompt_text": list(step.prompt_text) if step.prompt_text is not None else None,
            "tensor_file": tensor_file if tensors else None,
            "tensor_file_sha256": hashlib.sha256(blob).hexdigest() if tensors else None,
            "tensor_file_bytes": len(blob) if tensors else 0,
            "tensors": listing,
        }
        atomic_write_text(self.steps_dir / f"{entry}.json", json.dumps(record, indent=1) + "\n")
        self._count += 1
        return entry


def _warn_if_unloadable(entry: str, tensors: Mapping[str, Any], step: TraceStep) -> None:
    """Warn now, in the training process, about what the loader will leave out later."""
    import warnings

    problems = validate_step_tensors(tensors)
    if problems:
        listed = "; ".join(f"{field!r}: {message}" for field, message in problems)
        warnings.warn(
            f"grpo-check: step {entry} is written but will be skipped when loaded: {listed}", stacklevel=3
        )
        return
    texts = {"completion_text": step.completion_text, "prompt_text": step.prompt_text}
    text_problems = text_row_problems(tensors, texts)
    if text_problems:
        listed = "; ".join(f"{field!r}: {message}" for field, message in text_problems)
        warnings.warn(
            f"grpo-check: step {entry}: its text will be dropped when loaded: {listed}", stacklevel=3
        )


def save_trace(trace: Trace, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write ``trace`` to directory ``path`` (manifest + one safetensors/JSON pair per step), atomically.

    Raises :class:`InputError` if ``path`` already holds a trace and ``overwrite`` is false.
    """
    writer = TraceWriter(path, overwrite=overwrite)
    manifest = dict(trace.manifest)
    if "format" not in manifest:
        manifest = {**build_manifest(trainer=manifest.get("trainer", "custom")), **manifest}
    writer.write_manifest(manifest)  # first, so a crash while writing steps leaves a loadable trace
    for step in trace.steps:
        writer.append_step(step)
    writer.close(manifest)  # again, now with num_steps, dtypes and "complete": true
    return writer.path
