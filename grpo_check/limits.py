"""Bounds every reader checks before it allocates or recurses (documented in ``docs/robustness.md``).

Every file grpo-check reads (trace manifests and steps, saved results, golden vectors, audited configs)
goes through this module:

- :func:`read_bytes` refuses anything that is not a regular file (a device, a FIFO, a socket) *before*
  reading from it (the open never blocks), and refuses a file larger than the cap for its kind;
- :func:`loads_json` refuses JSON nested deeper than :data:`MAX_NESTING` (checked on the raw bytes, before
  the parser recurses) and integers longer than :data:`MAX_INT_DIGITS` digits;
- :func:`check_yaml` walks a YAML document's events (no recursion, no construction) and refuses nesting
  deeper than :data:`MAX_NESTING`, a recursive alias, a document whose alias expansion exceeds
  :data:`MAX_YAML_NODES` nodes (an alias bomb), and over-long integers;
- :func:`check_safetensors_blob` checks a tensor file's header (length, every tensor's name, dtype, shape
  and byte range) against the file's real size before the tensors are built.

Each refusal is an :class:`~grpo_check.findings.InputError` naming the file and, where there is one, the
field.

>>> loads_json('{"a": [1, 2]}')
{'a': [1, 2]}
>>> loads_json("[" * 200 + "]" * 200, source="x.json")
Traceback (most recent call last):
...
grpo_check.limits.LimitError: x.json: nested 200 levels deep; at most 100 are read
>>> loads_json('{"n": ' + "9" * 50 + "}", source="x.json")
Traceback (most recent call last):
...
grpo_check.limits.LimitError: x.json: an integer of 50 digits; at most 40 are read
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Any

from grpo_check.findings import InputError

MiB = 1 << 20
GiB = 1 << 30

#: Largest JSON file read as a trace manifest, a step's ``.json``, a saved result or a golden file.
MAX_JSON_BYTES = 256 * MiB
#: Largest audited configuration file (YAML or JSON).
MAX_CONFIG_BYTES = 16 * MiB
#: Largest step ``.safetensors`` file.
MAX_TENSOR_FILE_BYTES = 16 * GiB
#: Largest safetensors header (the JSON table of tensor names, dtypes, shapes and offsets).
MAX_SAFETENSORS_HEADER_BYTES = 16 * MiB
#: Deepest nesting of JSON arrays/objects or YAML sequences/mappings read.
MAX_NESTING = 100
#: Longest integer literal read (a 128-bit integer has 39 digits).
MAX_INT_DIGITS = 40
#: Most YAML nodes a document may expand to once its aliases are followed.
MAX_YAML_NODES = 200_000
#: Longest tensor name read.
MAX_NAME_LENGTH = 256
#: Largest count in a configuration (num_generations, batch sizes, accumulation steps, ...).
MAX_COUNT = 2**31 - 1
#: Integers stored in metadata must fit a signed 64-bit integer (the tensors they are compared with).
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

#: safetensors dtype codes the checks compute with (unsigned 16/32/64-bit and 8-bit floats are not).
SAFETENSORS_DTYPES: dict[str, int] = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "I16": 2,
    "I32": 4,
    "I64": 8,
    "F16": 2,
    "BF16": 2,
    "F32": 4,
    "F64": 8,
}
#: The same set as torch dtype names (``str(dtype)`` without ``torch.``).
SUPPORTED_TORCH_DTYPES: frozenset[str] = frozenset(
    {"bool", "uint8", "int8", "int16", "int32", "int64", "float16", "bfloat16", "float32", "float64"}
)


class LimitError(InputError):
    """An input beyond a documented bound (too large, too deep, not a regular file). ``message`` is the
    text without the file and field prefix."""

    def __init__(self, message: str, *, source: str | None = None, field: str | None = None):
        super().__init__(message, source=source, field=field)
        self.message = message


# ------------------------------------------------------------------------------------------------ files
def _open_regular(path: Path, source: str) -> tuple[int, os.stat_result]:
    """Open ``path`` for reading without blocking (a FIFO opens at once) and refuse anything not a regular
    file before a byte is read."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)  # FileNotFoundError / IsADirectoryError / PermissionError: the caller's
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(21, "Is a directory", str(path))
        if not stat.S_ISREG(info.st_mode):
            raise LimitError(f"not a regular file ({_kind(info.st_mode)}); refused", source=source)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, info


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a plain file"


def check_regular_file(path: str | os.PathLike[str], *, source: str | None = None) -> None:
    """Refuse a path that exists but is not a regular file or a directory (a device, a FIFO, a socket)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # missing: the caller's open says so
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise LimitError(f"not a regular file ({_kind(mode)}); refused", source=source or os.fspath(path))


def read_bytes(path: str | os.PathLike[str], *, cap: int, source: str | None = None) -> bytes:
    """The bytes of regular file ``path``, at most ``cap`` of them (a larger file is refused unread).

    Raises :class:`LimitError` for a device, FIFO or socket (never blocks on one) and for a file over
    ``cap``; ``OSError`` subclasses (missing, a directory, no permission) pass through for the caller.
    """
    path = Path(path)
    shown = source or str(path)
    fd, info = _open_regular(path, shown)
    with os.fdopen(fd, "rb") as handle:
        if info.st_size > cap:
            raise LimitError(f"file is {info.st_size} bytes; at most {cap} are read", source=shown)
        data = handle.read(info.st_size)  # never more than the file's size is allocated
        if handle.read(1):  # grew while being read: not a finished file
            raise LimitError("file grew while being read; refused", source=shown)
    return data


def read_text(path: str | os.PathLike[str], *, cap: int, source: str | None = None) -> str:
    """:func:`read_bytes` decoded as UTF-8 (``UnicodeDecodeError`` passes through for the caller)."""
    return read_bytes(path, cap=cap, source=source).decode("utf-8")


# ------------------------------------------------------------------------------------------------- JSON
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


def json_nesting(raw: bytes) -> int:
    """Deepest array/object nesting of JSON text ``raw`` (string contents ignored), without parsing it.

    >>> json_nesting(b'{"a": [[1], "]]]]"]}')
    3
    """
    import numpy as np

    stripped = _JSON_STRING.sub(b"", raw)
    codes = np.frombuffer(stripped, dtype=np.uint8)
    if codes.size == 0:
        return 0
    delta = (codes == ord("[")).astype(np.int32) + (codes == ord("{"))
    delta -= (codes == ord("]")).astype(np.int32) + (codes == ord("}"))
    return int(np.cumsum(delta).max(initial=0))


def _bounded_int(text: str) -> int:
    digits = len(text.lstrip("-+"))
    if digits > MAX_INT_DIGITS:
        raise _IntTooLong(digits)
    return int(text)


class _IntTooLong(ValueError):
    def __init__(self, digits: int):
        super().__init__(digits)
        self.digits = digits


def loads_json(
    text: str | bytes,
    *,
    source: str | None = None,
    max_depth: int = MAX_NESTING,
    field: str | None = None,
    object_pairs_hook: Any = None,
) -> Any:
    """``json.loads`` within bounds: nesting at most ``max_depth``, integers at most :data:`MAX_INT_DIGITS`
    digits. Over a bound: :class:`LimitError`. Malformed JSON: ``json.JSONDecodeError`` (the caller words it).
    """
    raw = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
    depth = json_nesting(raw)
    if depth > max_depth:
        raise LimitError(
            f"nested {depth} levels deep; at most {max_depth} are read", source=source, field=field
        )
    try:
        return json.loads(text, parse_int=_bounded_int, object_pairs_hook=object_pairs_hook)
    except _IntTooLong as exc:
        raise LimitError(
            f"an integer of {exc.digits} digits; at most {MAX_INT_DIGITS} are read",
            source=source,
            field=field,
        ) from None
    except RecursionError:  # pragma: no cover - the nesting check comes first
        raise LimitError("nested too deep to read", source=source, field=field) from None


def read_json(path: str | os.PathLike[str], *, cap: int = MAX_JSON_BYTES, what: str = "file") -> Any:
    """Read and parse a JSON file within bounds; every problem is an :class:`InputError` naming ``path``."""
    shown = str(path)
    try:
        raw = read_bytes(path, cap=cap, source=shown)
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{what} is not UTF-8 text (byte {exc.start})", source=shown) from None
    try:
        return loads_json(text, source=shown)
    except json.JSONDecodeError as exc:
        raise InputError(f"{what} is not valid JSON ({exc})", source=shown) from None


# ------------------------------------------------------------------------------------------------- YAML
_YAML_INT = re.compile(r"[-+]?(?:0[xX][0-9a-fA-F_]+|0[oO]?[0-7_]+|0[bB][01_]+|[0-9][0-9_:]*)")


def check_yaml(text: str, *, source: str | None = None) -> None:
    """Walk the YAML events of ``text`` (no recursion, nothing constructed) and refuse what would not be
    bounded to load: nesting deeper than :data:`MAX_NESTING`, an alias inside its own anchor (a recursive
    structure), more than :data:`MAX_YAML_NODES` nodes once aliases are expanded (an alias bomb), an
    integer longer than :data:`MAX_INT_DIGITS` digits. ``yaml.YAMLError`` passes through for the caller.

    >>> check_yaml("a: &x [1, 2]\\nb: *x\\n")
    >>> check_yaml("a: &x [*x]\\n", source="c.yaml")
    Traceback (most recent call last):
    ...
    grpo_check.limits.LimitError: c.yaml: field 'x': a recursive alias (the anchor refers to itself); refused
    """
    import yaml

    sizes: dict[str, int] = {}
    open_nodes: list[tuple[str | None, int]] = []  # (anchor, expanded count when it opened)
    open_anchors: set[str] = set()
    expanded = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            expanded += 1
            open_nodes.append((event.anchor, expanded))
            if event.anchor is not None:
                open_anchors.add(event.anchor)
            if len(open_nodes) > MAX_NESTING:
                raise LimitError(f"nested more than {MAX_NESTING} levels deep; refused", source=source)
        elif isinstance(event, yaml.CollectionEndEvent):
            anchor, opened_at = open_nodes.pop()
            if anchor is not None:
                sizes[anchor] = expanded - opened_at + 1
                open_anchors.discard(anchor)
        elif isinstance(event, yaml.ScalarEvent):
            expanded += 1
            if event.anchor is not None:
                sizes[event.anchor] = 1
            value = event.value
            if event.style is None and len(value) > MAX_INT_DIGITS and _YAML_INT.fullmatch(value):
                raise LimitError(
                    f"an integer of {len(value)} characters; at most {MAX_INT_DIGITS} digits are read",
                    source=source,
                )
        elif isinstance(event, yaml.AliasEvent):
            if event.anchor in open_anchors:
                raise LimitError(
                    "a recursive alias (the anchor refers to itself); refused",
                    source=source,
                    field=event.anchor,
                )
            expanded += sizes.get(event.anchor, 1)
        if expanded > MAX_YAML_NODES:
            raise LimitError(
                f"expands to more than {MAX_YAML_NODES} nodes once its aliases are followed (an alias bomb?); "
                "refused",
                source=source,
            )


# ------------------------------------------------------------------------------------------ safetensors
def check_safetensors_header(header: Any, body_bytes: int, *, source: str) -> None:
    """Every tensor a safetensors header declares: a sane name, a supported dtype, a shape of non-negative
    integers, and a byte range inside the ``body_bytes`` of data that matches dtype × shape."""
    if not isinstance(header, dict):
        raise LimitError(f"safetensors header is a {type(header).__name__}, not a table", source=source)
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                raise LimitError("must map names to strings", source=source, field="__metadata__")
            continue
        check_name(name, source=source)
        if not isinstance(info, dict):
            raise LimitError(f"expected a table, got {type(info).__name__}", source=source, field=name)
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in SAFETENSORS_DTYPES:
            raise LimitError(
                f"dtype {dtype!r} is not supported (one of {', '.join(SAFETENSORS_DTYPES)})",
                source=source,
                field=name,
            )
        if not isinstance(shape, list) or not all(_is_int(n) and n >= 0 for n in shape) or len(shape) > 8:
            raise LimitError(f"shape {shape!r} is not a list of at most 8 sizes", source=source, field=name)
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
            raise LimitError(f"data_offsets {offsets!r} is not [begin, end]", source=source, field=name)
        begin, end = offsets
        if not 0 <= begin <= end <= body_bytes:
            raise LimitError(
                f"bytes [{begin}, {end}) lie outside the file's {body_bytes} bytes of data",
                source=source,
                field=name,
            )
        numel = 1
        for n in shape:
            numel *= n
        if numel * SAFETENSORS_DTYPES[dtype] != end - begin:
            raise LimitError(
                f"shape {shape} of {dtype} needs {numel * SAFETENSORS_DTYPES[dtype]} bytes, the file gives "
                f"{end - begin}",
                source=source,
                field=name,
            )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_name(name: Any, *, source: str | None = None) -> None:
    """A tensor name: a string of at most :data:`MAX_NAME_LENGTH` printable characters."""
    if not isinstance(name, str) or not name:
        raise LimitError(f"a tensor name must be a non-empty string, got {name!r}", source=source)
    if len(name) > MAX_NAME_LENGTH:
        raise LimitError(
            f"a tensor name of {len(name)} characters; at most {MAX_NAME_LENGTH}",
            source=source,
            field=name[:40],
        )
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise LimitError("a tensor name holds a control character (NUL?)", source=source, field=ascii(name))


def check_safetensors_blob(blob: bytes, *, source: str) -> None:
    """The header of safetensors bytes ``blob`` within bounds and every tensor it declares inside ``blob``
    (so that parsing it allocates no more than the file holds)."""
    if len(blob) < 8:
        raise LimitError("shorter than a safetensors header (8 bytes)", source=source)
    length = int.from_bytes(blob[:8], "little")
    if length > MAX_SAFETENSORS_HEADER_BYTES or length > len(blob) - 8:
        raise LimitError(
            f"safetensors header claims {length} bytes; the file holds {len(blob) - 8} after the length "
            f"(at most {MAX_SAFETENSORS_HEADER_BYTES} are read)",
            source=source,
        )
    try:
        header = loads_json(blob[8 : 8 + length].decode("utf-8"), source=source, max_depth=4)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LimitError(f"safetensors header is not JSON ({exc})", source=source) from None
    check_safetensors_header(header, len(blob) - 8 - length, source=source)


# ----------------------------------------------------------------------------------------------- values
def check_int_range(value: Any, low: int, high: int, *, source: str | None = None, field: str) -> None:
    """``value`` an integer in ``[low, high]``; :class:`LimitError` naming ``field`` otherwise."""
    if _is_int(value) and not low <= value <= high:
        raise LimitError(f"{value} is outside [{low}, {high}]", source=source, field=field)
