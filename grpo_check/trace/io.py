"""Traces on disk: a directory of safetensors + JSON files, written atomically, validated on load.

Layout (specified in ``reference/trace-format.md``)::

    run1/
      manifest.json                        format, version, trainer, GRPOSpec, trainer config, versions, seeds
      steps/000003-mb01-r0.safetensors     the named tensors of step 3, micro-batch 1, rank 0
      steps/000003-mb01-r0.json            meta, completion/prompt text, tensor list (dtype, shape, bytes),
                                           sha256 of the .safetensors file

Every file is written to a temporary file in the same directory, fsync'ed and ``os.replace``'d into place,
so a crash mid-run leaves every step that was already written readable. A step's ``.json`` is written after
its ``.safetensors`` and is the step's commit marker: a ``.safetensors`` without its ``.json`` is an
unfinished write and is reported, never half-read. Nothing is ever pickled.

Example::

    >>> import tempfile, torch
    >>> from grpo_check.trace.model import Trace, TraceStep
    >>> from grpo_check.trace.io import save_trace, load_trace
    >>> step = TraceStep(tensors={"completion_ids": torch.tensor([[5, 6]]),
    ...                           "completion_mask": torch.tensor([[1, 0]])}, meta={"step": 0})
    >>> out = tempfile.mkdtemp()
    >>> _ = save_trace(Trace(manifest={"trainer": "demo"}, steps=[step]), out, overwrite=True)
    >>> load_trace(out).steps[0]["completion_mask"].tolist()
    [[1, 0]]
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
import json
import math
import os
import re
import stat
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from grpo_check import limits
from grpo_check._kinds import is_real_number, is_whole_number
from grpo_check.findings import InputError
from grpo_check.trace.model import TENSOR_STAGE, Trace, TraceStep

FORMAT_NAME = "grpo-check-trace"
STEP_FORMAT_NAME = "grpo-check-trace-step"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
STEPS_DIR = "steps"

# --- tensor-name rules (shape letters: B rows, T completion tokens, P prompt tokens, F reward functions) ---
ID_TENSORS: frozenset[str] = frozenset({"prompt_ids", "completion_ids", "group_index"})
MASK_TENSORS: frozenset[str] = frozenset(
    {"prompt_mask", "completion_mask", "tool_mask", "truncated", "is_low_clipped", "is_high_clipped"}
)
FLOAT_TENSORS: frozenset[str] = frozenset(TENSOR_STAGE) - ID_TENSORS - MASK_TENSORS
BT_TENSORS: frozenset[str] = frozenset(
    {
        "completion_ids",
        "completion_mask",
        "tool_mask",
        "logps",
        "old_logps",
        "ref_logps",
        "sampler_logps",
        "entropies",
        "kl",
        "per_token_loss",
        "logps_grad",
        "is_low_clipped",
        "is_high_clipped",
    }
)
BT_OR_B1_TENSORS: frozenset[str] = frozenset({"ratio", "clipped_ratio", "sampler_is_ratio"})
BP_TENSORS: frozenset[str] = frozenset({"prompt_ids", "prompt_mask"})
B_TENSORS: frozenset[str] = frozenset({"group_index", "truncated", "rewards"})
SCALAR_TENSORS: frozenset[str] = frozenset({"loss", "loss_normalizer"})


# ----------------------------------------------------------------------------------------------- atomic IO
def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


class OutputPathError(InputError, OSError):
    """An output destination that cannot be written (a directory, a parent that is a file, no permission,
    disk full). An :class:`~grpo_check.findings.InputError` (the CLI answers exit code 2 with one line) and
    still an :class:`OSError` for code that catches those."""


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: temp file in the same directory, fsync, ``os.replace``.

    A reader never sees a half-written file: either the old content (or nothing) or the new content.
    An unwritable destination (a directory, a parent that is a file, no permission, disk full) raises
    :class:`OutputPathError` naming the path; nothing is left behind.
    """
    shown = Path(path)
    target = Path(os.path.realpath(shown))  # a symlink is written through to its target, not replaced
    if target.is_dir():
        raise OutputPathError("is a directory; give a file name to write the output to", source=str(shown))
    if target.exists() and not stat.S_ISREG(target.stat().st_mode):  # a device or a pipe: renaming over
        raise OutputPathError(  # it would replace it with a plain file
            "is not a regular file (a device or a pipe); give a file name to write the output to",
            source=str(shown),
        )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except (FileExistsError, NotADirectoryError) as exc:
        raise OutputPathError(
            "cannot write here: a parent of this path is a file, not a directory", source=str(target)
        ) from exc
    except OSError as exc:
        raise OutputPathError(f"cannot write here: {exc.strerror or exc}", source=str(target)) from exc
    try:
        if hasattr(os, "fchmod"):  # mkstemp creates 0600; give the file the usual permissions
            os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise OutputPathError(f"cannot write here: {exc.strerror or exc}", source=str(shown)) from exc
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    _fsync_dir(target.parent)
    return shown  # as the caller named it (a relative path stays relative in messages)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """:func:`atomic_write_bytes` for UTF-8 text; a character UTF-8 cannot hold (a lone surrogate read from a
    malformed input) is written as its ``\\uXXXX`` escape, never a crash."""
    return atomic_write_bytes(path, text.encode("utf-8", "backslashreplace"))


def _fsync_dir(directory: Path) -> None:
    if os.name != "posix":  # pragma: no cover - directory fsync is a POSIX notion
        return
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ------------------------------------------------------------------------------------------ JSON helpers
def to_jsonable(value: Any) -> Any:
    """Best-effort conversion of metadata to JSON: tensors/arrays to lists, non-finite floats to strings.

    >>> import torch
    >>> to_jsonable({"n": torch.tensor(3), "x": float("nan"), "ids": (1, 2)})
    {'n': 3, 'x': 'nan', 'ids': [1, 2]}
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # torch.Tensor, numpy arrays and scalars
        return to_jsonable(value.tolist())
    if hasattr(value, "to_dict"):  # GRPOSpec, dataclass-likes
        return to_jsonable(value.to_dict())
    if hasattr(value, "__dataclass_fields__"):
        import dataclasses

        return to_jsonable(dataclasses.asdict(value))
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


def library_versions() -> dict[str, str | None]:
    """Versions of python, torch, transformers, trl and grpo-check (``None`` where not installed).

    Reads package metadata only, so it does not import transformers or trl.
    """
    from importlib import metadata

    def version_of(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    torch_module = sys.modules.get("torch")
    return {
        "python": sys.version.split()[0],
        "torch": getattr(torch_module, "__version__", None) or version_of("torch"),
        "transformers": version_of("transformers"),
        "trl": version_of("trl"),
        "grpo-check": version_of("grpo-check") or _own_version(),
    }


def _own_version() -> str | None:
    try:
        from grpo_check import __version__

        return __version__
    except ImportError:  # pragma: no cover
        return None


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def build_manifest(
    *,
    trainer: str = "custom",
    spec: Any = None,
    trainer_config: Mapping[str, Any] | None = None,
    seeds: Any = None,
    dtypes: Mapping[str, str] | None = None,
    notes: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A fresh manifest dict (format name and version, versions, created time filled in)."""
    if spec is None:
        config: dict[str, Any] = {}
    elif isinstance(spec, Mapping):
        config = dict(spec)
    else:
        config = spec.to_dict()
    manifest: dict[str, Any] = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "trainer": trainer,
        "config": to_jsonable(config),
        "trainer_config": to_jsonable(dict(trainer_config)) if trainer_config is not None else None,
        "versions": library_versions(),
        "dtypes": dict(dtypes or {}),
        "seeds": to_jsonable(seeds),
        "created": utc_now(),
        "notes": notes,
    }
    if extra:
        manifest.update(to_jsonable(dict(extra)))
    return manifest


# ------------------------------------------------------------------------------------------------ writing
def step_entry_name(meta: Mapping[str, Any], index: int) -> str:
    """File stem of one step: ``<step:06d>-mb<micro_batch:02d>-r<rank>`` (``index`` when step is unknown).

    >>> step_entry_name({"step": 3, "micro_batch": 1, "rank": 0}, index=7)
    '000003-mb01-r0'
    """
    step = meta.get("step")
    step_number = int(step) if isinstance(step, int) else index
    micro_batch = meta.get("micro_batch")
    micro_batch = int(micro_batch) if isinstance(micro_batch, int) else 0
    rank = meta.get("rank")
    rank = int(rank) if isinstance(rank, int) else 0
    return f"{step_number:06d}-mb{micro_batch:02d}-r{rank}"


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


def _dtype_name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")


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


# ------------------------------------------------------------------------------------------------ loading
def load_trace(path: str | os.PathLike[str], *, strict: bool = False) -> Trace:
    """Read and validate a trace directory (or its ``manifest.json``).

    Format checks (a step failing one is left out): the ``.safetensors`` file matches the size and sha256
    its ``.json`` recorded and parses; tensor names are canonical (``grpo_check.trace.model.TENSOR_STAGE``)
    or start with ``extra.`` (an unknown name drops only that tensor); shapes agree on B (rows) and T
    (completion tokens), ``advantages`` (B,) or (B, T), ``ratio`` (B, T) or (B, 1); ids are integer and
    float quantities floating point; ``group_index`` is non-negative.

    Partial drops (the step is kept without the faulty part): a ``completion_text`` / ``prompt_text`` that is
    not a list of strings or has not one entry per row is dropped; a step meta key the checks read as an
    integer (:data:`INT_META_KEYS`, ``eos_token_ids``) holding another type is dropped.

    Value checks (the step is kept, because these are pipeline bugs the invariants diagnose): masks hold only
    0/1; no group has more rows than the manifest's ``num_generations``.

    With ``strict=False`` (default) each problem is appended to ``trace.problems`` as
    ``"<file>: field '<name>': <what>"``; readable steps are kept. With ``strict=True`` the first problem
    raises :class:`InputError` (``.source`` = file, ``.field`` = field). A missing or unreadable manifest, a
    newer ``format_version``, or a trace with no readable step at all always raise :class:`InputError`.
    """
    if not isinstance(path, str | os.PathLike):
        raise InputError(f"a trace path is a string or a path, got {type(path).__name__}")
    root = Path(path)
    if root.is_file() and root.name == MANIFEST_FILE:
        root = root.parent
    if not root.exists():
        raise InputError("no such trace directory", source=str(root))
    if not root.is_dir():
        raise InputError("a trace is a directory holding manifest.json and steps/", source=str(root))
    manifest = _read_manifest(root / MANIFEST_FILE)
    problems: list[str] = []

    def problem(message: str, *, source: Path, field: str | None) -> None:
        error = InputError(message, source=str(source), field=field)
        if strict:
            raise error
        problems.append(str(error))

    _drop_mistyped_manifest_fields(manifest, root / MANIFEST_FILE, problem)
    num_generations = _manifest_num_generations(manifest, root / MANIFEST_FILE, problem)
    _unknown_config_fields(manifest, root / MANIFEST_FILE, problem)
    steps_dir = root / STEPS_DIR
    loaded: list[tuple[int, str, TraceStep]] = []
    if steps_dir.is_dir():
        json_files = sorted(p for p in steps_dir.glob("*.json") if not p.name.startswith("."))
        for orphan in sorted(steps_dir.glob("*.safetensors")):
            if not orphan.with_suffix(".json").exists() and not orphan.name.startswith("."):
                problem(
                    "tensor file has no matching .json (the run stopped while writing this step?); skipped",
                    source=orphan,
                    field=None,
                )
        for json_path in json_files:
            item = _load_step(json_path, num_generations, problem)
            if item is not None:
                loaded.append(item)
    if manifest.get("complete") is False:  # written by a TraceWriter that was never closed
        problem(
            f"the run did not close this trace (interrupted or crashed?): {len(loaded)} complete step(s) read",
            source=root / MANIFEST_FILE,
            field="complete",
        )
    if not loaded:
        detail = f"; problems: {'; '.join(problems)}" if problems else ""
        raise InputError(f"trace holds no readable step{detail}", source=str(steps_dir))
    loaded.sort(key=lambda item: (item[0], item[1]))
    steps = [step for _, _, step in loaded]
    return Trace(manifest=manifest, steps=steps, problems=problems, source=str(root / MANIFEST_FILE))


def _is_str_or_none(value: Any) -> bool:
    return value is None or isinstance(value, str)


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _is_str_map(value: Any) -> bool:
    return isinstance(value, dict) and all(_is_str_or_none(v) for v in value.values())


# manifest keys the checks and reports read, and the kind of value each must hold
MANIFEST_FIELD_KINDS: dict[str, tuple[str, Any]] = {
    "trainer": ("a string", _is_str_or_none),
    "source": ("a string", _is_str_or_none),
    "notes": ("a string or a list of strings", lambda v: _is_str_or_none(v) or _is_str_list(v)),
    "created": ("a string", _is_str_or_none),
    "versions": ("an object of version strings", lambda v: v is None or _is_str_map(v)),
    "dtypes": ("an object of dtype names", lambda v: v is None or _is_str_map(v)),
    "trainer_config": ("an object", lambda v: v is None or isinstance(v, dict)),
    "num_steps": ("an integer", lambda v: v is None or _is_int64(v)),
    "complete": ("true or false", lambda v: isinstance(v, bool)),
}


def _drop_mistyped_manifest_fields(manifest: dict[str, Any], path: Path, problem) -> None:
    """A manifest key holding a value of the wrong kind is reported and dropped (the steps are still read)."""
    for key, (kind, valid) in MANIFEST_FIELD_KINDS.items():
        if key in manifest and not valid(manifest[key]):
            problem(f"must be {kind}, got {_short(manifest[key])}; ignored", source=path, field=key)
            del manifest[key]


def _unknown_config_fields(manifest: dict[str, Any], path: Path, problem) -> None:
    """A config key no GRPOSpec field has is ignored by ``trace.spec()``: say so (a typo keeps the default)."""
    import difflib

    from grpo_check.config import GRPOSpec

    config = manifest.get("config")
    if not isinstance(config, dict):
        return  # Trace.spec() refuses it
    fields = [field.name for field in dataclasses.fields(GRPOSpec)]
    for key in sorted(set(config) - set(fields)):
        near = difflib.get_close_matches(str(key), fields, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        problem(f"unknown GRPOSpec field, ignored{hint}", source=path, field=f"config.{key}")


def _read_manifest(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise InputError(
            "missing manifest.json: not a grpo-check trace directory", source=str(path.parent), field=None
        )
    if not path.is_file():  # a directory or a pipe (reading a pipe with no writer would wait forever)
        raise InputError("manifest.json is not a regular file", source=str(path))
    try:
        raw = limits.read_bytes(path, cap=limits.MAX_JSON_BYTES)
        manifest = limits.loads_json(raw.decode("utf-8"), source=str(path))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"manifest is not valid JSON ({exc})", source=str(path)) from None
    if not isinstance(manifest, dict):
        raise InputError("manifest must be a JSON object", source=str(path))
    if manifest.get("format") != FORMAT_NAME:
        raise InputError(
            f"expected format {FORMAT_NAME!r}, got {manifest.get('format')!r}",
            source=str(path),
            field="format",
        )
    version = manifest.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise InputError(f"bad format_version {version!r}", source=str(path), field="format_version")
    if version > FORMAT_VERSION:
        raise InputError(
            f"trace format_version {version} is newer than this grpo-check reads ({FORMAT_VERSION}); "
            "upgrade grpo-check",
            source=str(path),
            field="format_version",
        )
    return manifest


def _manifest_num_generations(manifest: dict[str, Any], source: Path, problem) -> int | None:
    config = manifest.get("config")
    if config in (None, {}):
        return None
    if not isinstance(config, dict):
        problem("must be a JSON object (a GRPOSpec dict)", source=source, field="config")
        return None
    from grpo_check.config import GRPOSpec

    try:
        spec = GRPOSpec.from_dict(config)
    except InputError as exc:
        problem(f"not a valid GRPOSpec: {exc}", source=source, field=f"config.{exc.field or '?'}")
        return None
    except (TypeError, ValueError) as exc:
        problem(f"not a valid GRPOSpec: {exc}", source=source, field="config")
        return None
    return spec.num_generations if "num_generations" in config else None


_STEM = re.compile(r"^(\d+)-mb(\d+)-r(\d+)")


def _load_step(json_path: Path, num_generations: int | None, problem) -> tuple[int, str, TraceStep] | None:
    """Read one step; on any problem report it and return ``None`` (so the step is left out)."""
    try:
        raw = limits.read_bytes(json_path, cap=limits.MAX_JSON_BYTES)
        record = limits.loads_json(raw.decode("utf-8"), source=None)
    except limits.LimitError as exc:
        problem(f"{exc.message}; step skipped", source=json_path, field=exc.field)
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        problem(f"step metadata is not valid JSON ({exc}); step skipped", source=json_path, field=None)
        return None
    if not isinstance(record, dict) or record.get("format") != STEP_FORMAT_NAME:
        problem(f"not a trace step (expected format {STEP_FORMAT_NAME!r})", source=json_path, field="format")
        return None
    meta = record.get("meta") or {}
    if not isinstance(meta, dict):
        problem("must be a JSON object", source=json_path, field="meta")
        return None
    meta = _typed_meta(meta, json_path, problem)
    texts = _read_texts(record, json_path, problem)
    tensors = _read_tensor_file(json_path, record, problem)
    if tensors is None:
        return None
    listing = record.get("tensors") or {}
    if not isinstance(listing, dict):
        problem(
            f"must be a JSON object (tensor name -> dtype, shape), got {type(listing).__name__}; step skipped",
            source=json_path,
            field="tensors",
        )
        return None
    for name in list(tensors):
        if name not in TENSOR_STAGE and not name.startswith("extra."):
            problem(
                "unknown tensor name (use a canonical name from grpo_check.trace.model.TENSOR_STAGE, or "
                "prefix it with 'extra.'); tensor ignored",
                source=json_path.with_suffix(".safetensors"),
                field=name,
            )
            del tensors[name]
    for name, info in listing.items():
        if name not in tensors and (name in TENSOR_STAGE or name.startswith("extra.")):
            problem("listed in the .json but absent from the tensor file", source=json_path, field=name)
            return None
        recorded_shape = info.get("shape") if isinstance(info, dict) else None
        if name in tensors and recorded_shape is not None and list(tensors[name].shape) != recorded_shape:
            problem(
                f"shape {list(tensors[name].shape)} in the tensor file, {recorded_shape} in the .json",
                source=json_path,
                field=name,
            )
            return None
    errors = validate_step_tensors(tensors)
    for name in SCALAR_TENSORS & set(tensors):  # a scalar saved as (1,) or (1, 1) is read as the scalar it is
        if tensors[name].numel() == 1:
            tensors[name] = tensors[name].reshape(())
    tensor_path = json_path.with_suffix(".safetensors")
    if errors:
        for field, message in errors:
            problem(message + "; step skipped", source=tensor_path, field=field)
        return None
    for field, message in text_row_problems(tensors, texts):
        problem(message + "; text dropped, tensors kept", source=json_path, field=field)
        texts[field] = None
    for field, message in step_value_problems(tensors, num_generations=num_generations):
        problem(message + "; step kept for the invariants to diagnose", source=tensor_path, field=field)
    index = record.get("index")
    order = int(index) if isinstance(index, int) else _order_from_stem(json_path.stem)
    step = TraceStep(
        tensors=tensors, completion_text=texts["completion_text"], prompt_text=texts["prompt_text"], meta=meta
    )
    return order, json_path.stem, step


# Step meta keys the checks convert with int(): a wrongly typed value would otherwise fail far from the file.
INT_META_KEYS: tuple[str, ...] = (
    "step",
    "micro_batch",
    "rank",
    "iteration",
    "optimizer_steps_since_old_logps",
    "generation_step",
    "gradient_accumulation_steps",
    "steps_per_generation",
    "num_processes",
    "pad_token_id",
)
INT_LIST_META_KEYS: tuple[str, ...] = ("eos_token_ids",)  # an int or a list of ints


def meta_type_problems(meta: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Step meta keys holding a value of the wrong type, as ``(key, message)`` pairs (empty when valid).

    >>> meta_type_problems({"step": "zero", "rank": 0, "eos_token_ids": [2]})
    [('step', "must be an integer or null, got 'zero'")]
    """
    problems: list[tuple[str, str]] = []
    for key, value in meta.items():
        if key in INT_META_KEYS and value is not None and not _is_int64(value):
            problems.append((key, f"must be an integer or null, got {_short(value)}"))
        elif key in INT_LIST_META_KEYS and value is not None and not _is_int_or_int_list(value):
            problems.append((key, f"must be an integer or a list of integers, got {_short(value)}"))
        elif key in NUMBER_META_KEYS and value is not None and not _is_count(value):
            problems.append((key, f"must be a finite number >= 0 or null, got {_short(value)}"))
    return problems


# Step meta keys the checks convert with float(): a count of items, a number >= 0.
NUMBER_META_KEYS: tuple[str, ...] = ("num_items_in_batch",)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_int64(value: Any) -> bool:
    return is_whole_number(value) and limits.INT64_MIN <= int(value) <= limits.INT64_MAX


def _is_count(value: Any) -> bool:
    if not is_real_number(value):
        return False
    try:
        number = float(value)
    except OverflowError:  # an integer too large for a float
        return False
    return math.isfinite(number) and number >= 0


def _is_int_or_int_list(value: Any) -> bool:
    return _is_int64(value) or (
        isinstance(value, list) and len(value) <= 4096 and all(_is_int64(v) for v in value)
    )


def _typed_meta(meta: dict[str, Any], json_path: Path, problem) -> dict[str, Any]:
    """``meta`` without the keys whose value has the wrong type (each reported); the step itself is kept."""
    bad = meta_type_problems(meta)
    for key, message in bad:
        problem(message + "; key dropped, step kept", source=json_path, field=f"meta.{key}")
    dropped = {key for key, _ in bad}
    return {key: value for key, value in meta.items() if key not in dropped}


def _read_texts(record: Mapping[str, Any], json_path: Path, problem) -> dict[str, list[str] | None]:
    """The step's ``completion_text`` / ``prompt_text``; one that is not a list of strings is reported and
    dropped (the step's tensors are still used)."""
    texts: dict[str, list[str] | None] = {}
    for key in ("completion_text", "prompt_text"):
        value = record.get(key)
        if value is not None and not (isinstance(value, list) and all(isinstance(s, str) for s in value)):
            problem("must be a list of strings; text dropped, tensors kept", source=json_path, field=key)
            value = None
        texts[key] = value
    return texts


def text_row_problems(
    tensors: Mapping[str, Any], texts: Mapping[str, list[str] | None]
) -> list[tuple[str, str]]:
    """Texts whose entry count differs from the step's rows (B), as ``(field, message)`` pairs.

    >>> import torch
    >>> text_row_problems({"rewards": torch.zeros(4)}, {"completion_text": ["a", "b", "c"]})
    [('completion_text', 'has 3 entries for 4 rows')]
    """
    rows = batch_rows(tensors)
    if rows is None:
        return []
    return [
        (field, f"has {len(text)} entries for {rows} rows")
        for field, text in texts.items()
        if text is not None and len(text) != rows
    ]


def _order_from_stem(stem: str) -> int:
    match = _STEM.match(stem)
    return int(match.group(1)) if match else 0


def _read_tensor_file(json_path: Path, record: dict[str, Any], problem) -> dict[str, Any] | None:
    tensor_file = record.get("tensor_file")
    if tensor_file is None:
        return {}
    if not isinstance(tensor_file, str) or "/" in tensor_file or "\\" in tensor_file:
        problem("must be a file name inside steps/", source=json_path, field="tensor_file")
        return None
    tensor_path = json_path.parent / tensor_file
    try:
        blob = limits.read_bytes(tensor_path, cap=limits.MAX_TENSOR_FILE_BYTES)  # a regular file, bounded
    except limits.LimitError as exc:
        problem(f"{exc.message}; step skipped", source=tensor_path, field=exc.field)
        return None
    except OSError as exc:
        problem(f"cannot read the tensor file ({exc.strerror or exc})", source=tensor_path, field=None)
        return None
    expected_size = record.get("tensor_file_bytes")
    if isinstance(expected_size, int) and not isinstance(expected_size, bool) and expected_size != len(blob):
        problem(
            f"file is {len(blob)} bytes, the .json recorded {expected_size} (truncated or overwritten)",
            source=tensor_path,
            field="tensor_file_bytes",
        )
        return None
    expected_sha = record.get("tensor_file_sha256")
    if isinstance(expected_sha, str) and hashlib.sha256(blob).hexdigest() != expected_sha:
        problem(
            "sha256 does not match the .json (file corrupted or overwritten)",
            source=tensor_path,
            field="tensor_file_sha256",
        )
        return None
    try:  # every declared tensor inside the file, with a supported dtype, before safetensors builds them
        limits.check_safetensors_blob(blob, source=str(tensor_path))
    except limits.LimitError as exc:
        problem(
            f"not a readable safetensors file ({exc.message}); step skipped",
            source=tensor_path,
            field=exc.field,
        )
        return None
    from safetensors.torch import load as safetensors_load

    try:
        return dict(safetensors_load(blob))
    except Exception as exc:  # safetensors raises its own SafetensorError on truncated/garbled files
        problem(f"not a readable safetensors file ({exc})", source=tensor_path, field=None)
        return None


_ROW_TENSORS = BT_TENSORS | BT_OR_B1_TENSORS | BP_TENSORS | B_TENSORS | {"rewards_per_func", "advantages"}


def batch_rows(tensors: Mapping[str, Any]) -> int | None:
    """B, the number of rows, from the first tensor that has one (``None`` when none has)."""
    for name, tensor in tensors.items():
        if name in _ROW_TENSORS and tensor.dim() >= 1:
            return int(tensor.shape[0])
    return None


def validate_step_tensors(tensors: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Format errors in one step's named tensors; returns ``(field, message)`` pairs (empty when valid).

    A step with a format error cannot be used (the loader leaves it out). Rules: dtype classes (ids
    integer, masks bool/integer/float, quantities floating point), shapes consistent on B and T,
    ``advantages`` (B,) or (B, T), ``ratio`` (B, T) or (B, 1), ``loss`` a scalar, ``group_index``
    non-negative. Tensors with an ``extra.`` prefix are not checked. Values that are legal to store but
    wrong for GRPO (a mask holding 2) are :func:`step_value_problems`.

    >>> import torch
    >>> validate_step_tensors({"completion_ids": torch.zeros(2, 3), "completion_mask": torch.ones(2, 4)})
    [('completion_ids', 'ids must be an integer tensor, got dtype float32'), ('completion_mask', "T = 4 along this tensor but T = 3 in 'completion_ids'")]
    """
    import torch

    errors: list[tuple[str, str]] = []
    known = {n: t for n, t in tensors.items() if n in TENSOR_STAGE}
    for name, tensor in known.items():
        if _dtype_name(tensor.dtype) not in limits.SUPPORTED_TORCH_DTYPES:
            errors.append(
                (
                    name,
                    f"dtype {_dtype_name(tensor.dtype)} is not supported "
                    f"(one of {', '.join(sorted(limits.SUPPORTED_TORCH_DTYPES))})",
                )
            )
        elif name in ID_TENSORS and (tensor.dtype.is_floating_point or tensor.dtype.is_complex):
            errors.append((name, f"ids must be an integer tensor, got dtype {_dtype_name(tensor.dtype)}"))
        elif name in ID_TENSORS and tensor.dtype == torch.bool:
            errors.append((name, "ids must be an integer tensor, got dtype bool"))
        elif name in MASK_TENSORS and tensor.dtype.is_complex:
            errors.append((name, f"mask must be 0/1, got dtype {_dtype_name(tensor.dtype)}"))
        elif name in FLOAT_TENSORS and not tensor.dtype.is_floating_point:
            errors.append((name, f"must be a floating-point tensor, got dtype {_dtype_name(tensor.dtype)}"))
    errors += _shape_errors(known)
    group_index = known.get("group_index")
    bad_group_index = any(f == "group_index" for f, _ in errors)
    if (
        group_index is not None
        and not bad_group_index
        and group_index.numel()
        and bool((group_index < 0).any())
    ):
        errors.append(("group_index", "must be non-negative (one id per prompt)"))
    return errors


def step_value_problems(
    tensors: Mapping[str, Any], *, num_generations: int | None = None
) -> list[tuple[str, str]]:
    """Values a well-formed step should not hold: masks other than 0/1, a group with more than
    ``num_generations`` rows. These are pipeline bugs the invariants (``batch.masks_binary``,
    ``batch.group_sizes``) report with a diagnosis, so the loader keeps such a step and only notes them.

    >>> import torch
    >>> step_value_problems({"completion_mask": torch.tensor([[1, 2, 0], [1, 1, 0]])})
    [('completion_mask', 'mask must hold only 0 and 1; found value 2 at index (0, 1)')]
    """
    import torch

    problems: list[tuple[str, str]] = []
    for name in sorted(MASK_TENSORS & set(tensors)):
        tensor = tensors[name]
        if not tensor.numel() or tensor.dtype == torch.bool or tensor.dtype.is_complex:
            continue
        bad = ~((tensor == 0) | (tensor == 1))
        if bool(bad.any()):
            position = tuple(int(i) for i in bad.nonzero()[0].tolist())
            value = tensor[position].item() if position else tensor.item()
            problems.append((name, f"mask must hold only 0 and 1; found value {value:g} at index {position}"))
    group_index = tensors.get("group_index")
    if (
        num_generations is not None
        and group_index is not None
        and group_index.numel()
        and not group_index.dtype.is_floating_point
        and group_index.dtype != torch.bool
        and bool((group_index >= 0).all())
    ):
        # unique, not bincount: a group id of 2**40 must not allocate a 2**40-long count table
        labels, counts = torch.unique(group_index.reshape(-1).long(), return_counts=True)
        worst = int(counts.argmax())
        if int(counts[worst]) > num_generations:
            problems.append(
                (
                    "group_index",
                    f"group {int(labels[worst])} has {int(counts[worst])} rows but num_generations is "
                    f"{num_generations} (rows of different prompts share a group id?)",
                )
            )
    return problems


def _shape_errors(tensors: Mapping[str, Any]) -> list[tuple[str, str]]:
    errors: list[tuple[str, str]] = []
    rows: tuple[str, int] | None = None  # (which tensor fixed B, B)
    tokens: tuple[str, int] | None = None  # (which tensor fixed T, T)
    prompt_len: tuple[str, int] | None = None
    functions: tuple[str, int] | None = None

    def agree(name: str, size: int, anchor: tuple[str, int] | None, letter: str):
        if anchor is None:
            return (name, size)
        if anchor[1] != size:
            errors.append(
                (name, f"{letter} = {size} along this tensor but {letter} = {anchor[1]} in {anchor[0]!r}")
            )
        return anchor

    order = sorted(tensors, key=lambda n: (n not in ("completion_ids", "completion_mask"), n))
    for name in order:
        shape = tuple(tensors[name].shape)
        if name in SCALAR_TENSORS:
            if tensors[name].numel() != 1:
                errors.append((name, f"must be a scalar, got shape {list(shape)}"))
            continue
        if name == "reward_weights":
            if len(shape) != 1:
                errors.append((name, f"must be (F,), got shape {list(shape)}"))
            else:
                functions = agree(name, shape[0], functions, "F")
            continue
        if name in BT_TENSORS or name in BP_TENSORS or name == "rewards_per_func":
            if len(shape) != 2:
                want = {"rewards_per_func": "(B, F)"}.get(name, "(B, P)" if name in BP_TENSORS else "(B, T)")
                errors.append((name, f"must be {want}, got shape {list(shape)}"))
                continue
            rows = agree(name, shape[0], rows, "B")
            if name in BT_TENSORS:
                tokens = agree(name, shape[1], tokens, "T")
            elif name in BP_TENSORS:
                prompt_len = agree(name, shape[1], prompt_len, "P")
            else:
                functions = agree(name, shape[1], functions, "F")
        elif name in BT_OR_B1_TENSORS:
            if len(shape) != 2:
                errors.append((name, f"must be (B, T) or (B, 1), got shape {list(shape)}"))
                continue
            rows = agree(name, shape[0], rows, "B")
            if shape[1] != 1:
                tokens = agree(name, shape[1], tokens, "T")
        elif name == "advantages":
            if len(shape) not in (1, 2):
                errors.append((name, f"must be (B,) or (B, T), got shape {list(shape)}"))
                continue
            rows = agree(name, shape[0], rows, "B")
            if len(shape) == 2:
                tokens = agree(name, shape[1], tokens, "T")
        elif name in B_TENSORS:
            if len(shape) != 1:
                errors.append((name, f"must be (B,), got shape {list(shape)}"))
                continue
            rows = agree(name, shape[0], rows, "B")
    return errors


def _check_name(name: str, *, source: str | None) -> None:
    if name not in TENSOR_STAGE and not name.startswith("extra."):
        raise InputError(
            "unknown tensor name; use a canonical name (grpo_check.trace.model.TENSOR_STAGE) or prefix it "
            "with 'extra.'",
            source=source,
            field=name,
        )


def tensor_names(steps: Iterable[TraceStep]) -> list[str]:
    """Every tensor name present in any of ``steps``, in canonical order then extras."""
    present = {name for step in steps for name in step.tensors}
    canonical = [n for n in TENSOR_STAGE if n in present]
    return canonical + sorted(present - set(canonical))
