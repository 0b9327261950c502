"""Reading traces: :func:`load_trace` reads a trace directory, checks its manifest and every step, and keeps
the readable steps with a problem line for each thing left out."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from grpo_check import limits
from grpo_check.findings import InputError
from grpo_check.trace.format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST_FILE,
    SCALAR_TENSORS,
    STEP_FORMAT_NAME,
    STEPS_DIR,
)
from grpo_check.trace.model import TENSOR_STAGE, Trace, TraceStep
from grpo_check.trace.validate import (
    _is_int64,
    _short,
    meta_type_problems,
    step_value_problems,
    text_row_problems,
    validate_step_tensors,
)


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
