"""Crash-safe report output: atomic file writes and an incremental findings log.

:class:`ResultWriter` appends every finding to ``result.partial.jsonl`` the moment it is found (one JSON object
per line, flushed and fsync'ed), and renders the full reports when it is closed. A run killed half-way
leaves a readable log: ``grpo-check report reports/run1/result.partial.jsonl`` renders it, and
:func:`read_partial` loads it as a :class:`~grpo_check.findings.Result`.

Log lines: ``{"type": "metadata", "metadata": {...}}`` (the last one wins),
``{"type": "finding", "finding": {...}}`` (``Finding.to_dict``) and, written by :meth:`ResultWriter.close`,
``{"type": "end"}``. A torn last line is ignored. A log with no ``end`` line comes from a run that was killed
or crashed: :func:`read_partial` marks it ``metadata["incomplete"]``, and every renderer says so.

Example::

    >>> import tempfile
    >>> from grpo_check.findings import Finding
    >>> out = tempfile.mkdtemp()
    >>> with ResultWriter(out, formats=("json",)) as writer:
    ...     _ = writer.add(Finding("loss.finite", "loss", "pass"))
    >>> sorted(p.name for p in writer.paths.values())
    ['result.json']
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from grpo_check.findings import Finding, InputError, Result
from grpo_check.report._validate import check_finding_record, check_metadata
from grpo_check.trace.io import atomic_write_bytes, atomic_write_text, to_jsonable

__all__ = [
    "PARTIAL_NAME",
    "SET_NAME",
    "ResultWriter",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_report_set",
    "publish_report_set",
    "read_partial",
]

PARTIAL_NAME = "result.partial.jsonl"
SET_NAME = "report-set.json"
SET_FORMAT = "grpo-check-report-set"


class ResultWriter:
    """Collects findings, logging each to disk at once; :meth:`close` writes the rendered reports.

    Args:
        out_dir: report directory (created).
        formats: formats :func:`grpo_check.report.write_report` writes at the end.
        metadata: initial ``Result.metadata``.
        keep_partial: keep ``result.partial.jsonl`` after the final reports are written.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        *,
        formats: Sequence[str] = ("md", "html", "json", "junit"),
        metadata: dict[str, Any] | None = None,
        keep_partial: bool = False,
    ):
        from grpo_check.report import make_output_dir

        self.out_dir = make_output_dir(out_dir)
        self.formats = tuple(formats)
        self.keep_partial = keep_partial
        self.result = Result(metadata=dict(metadata or {}))
        self.partial_path = self.out_dir / PARTIAL_NAME
        self._handle = open(self.partial_path, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self.paths: dict[str, Path] = {}
        self._closed = False
        self._append({"type": "metadata", "metadata": self.result.metadata})

    def _append(self, record: dict[str, Any]) -> None:
        self._handle.write(json.dumps(to_jsonable(record), default=str) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def add(self, finding: Finding) -> Finding:
        """Record one finding (logged to disk before returning)."""
        self.result.add(finding)
        self._append({"type": "finding", "finding": finding.to_dict()})
        return finding

    def extend(self, findings: Iterable[Finding]) -> None:
        for finding in findings:
            self.add(finding)

    def update_metadata(self, **metadata: Any) -> None:
        """Merge keys into ``Result.metadata`` (logged)."""
        self.result.metadata.update(metadata)
        self._append({"type": "metadata", "metadata": self.result.metadata})

    def close(self) -> Result:
        """Render every format atomically, drop the partial log (unless kept) and return the result."""
        if self._closed:
            return self.result
        self._closed = True
        self._append({"type": "end"})  # a log without this line comes from a run that never finished
        self._handle.close()
        from grpo_check.report import write_report

        self.paths = write_report(self.result, self.out_dir, formats=self.formats)
        if not self.keep_partial:
            self.partial_path.unlink(missing_ok=True)
        return self.result

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None:
            self.update_metadata(incomplete=f"stopped by {exc_type.__name__}: {exc}")
            self.keep_partial = True
        self.close()


def read_partial(path: str | os.PathLike[str]) -> Result:
    """Load a ``result.partial.jsonl`` log (possibly cut off mid-line) as a :class:`Result`."""
    source = Path(path)
    from grpo_check import limits

    try:
        text = limits.read_text(source, cap=limits.MAX_JSON_BYTES)
    except UnicodeDecodeError as exc:
        raise InputError(f"not UTF-8 text ({exc})", source=str(source)) from None
    result = Result()
    ended = False
    lines = text.splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = limits.loads_json(line, source=str(source), field=f"line {number}")
        except json.JSONDecodeError:
            if number == len(lines):  # the run was killed while writing this line
                result.metadata["incomplete"] = result.metadata.get("incomplete") or "log ends in a torn line"
                break
            raise InputError(
                f"line {number} is not JSON", source=str(source), field=f"line {number}"
            ) from None
        kind = record.get("type") if isinstance(record, dict) else None
        try:
            if kind == "end":
                ended = True
            elif kind == "metadata":
                result.metadata = check_metadata(record.get("metadata"))
            elif kind == "finding":
                result.add(_finding_from_record(record["finding"]))
            else:
                raise ValueError(f"unknown record type {kind!r}")
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"bad record ({exc})", source=str(source), field=f"line {number}") from None
    if not ended:
        result.metadata.setdefault(
            "incomplete",
            "the log was never closed: the run was killed or crashed, so checks after its last line are missing",
        )
    result.metadata.setdefault("source", str(source))
    return result


def _finding_from_record(record: Any) -> Finding:
    """A logged finding, its shape checked first (:class:`ValueError` naming the field at fault)."""
    if not isinstance(record, dict):
        raise ValueError(f"finding must be an object, got {type(record).__name__}")
    check_finding_record(record)
    return Finding.from_dict(record)


# ------------------------------------------------------------------------------------------ report sets
@contextlib.contextmanager
def publish_report_set(directory: Path) -> Iterator[Callable[[str, str], Path]]:
    """Publish files in ``directory`` as one set: yields ``publish(name, text) -> path``.

    On entry ``report-set.json`` is (atomically) replaced by ``{"run_id": <new>, "complete": false}``, so the
    previous set is withdrawn before any of its files is replaced; each published file is written
    atomically; on a clean exit ``report-set.json`` lists every file with its sha256 and says
    ``"complete": true``. A run killed in between leaves the set marked incomplete, never a folder that
    silently mixes two runs.
    """
    import hashlib
    import uuid

    from grpo_check.trace.io import utc_now

    run_id = uuid.uuid4().hex
    record: dict[str, Any] = {"format": SET_FORMAT, "run_id": run_id, "created": utc_now(), "complete": False}
    set_path = directory / SET_NAME
    atomic_write_text(set_path, json.dumps({**record, "files": {}}, indent=1) + "\n")
    files: dict[str, dict[str, Any]] = {}

    def publish(name: str, text: str) -> Path:
        data = text.encode("utf-8", "backslashreplace")
        path = atomic_write_bytes(directory / name, data)
        files[name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        return path

    yield publish
    atomic_write_text(set_path, json.dumps({**record, "complete": True, "files": files}, indent=1) + "\n")


def check_report_set(directory: str | os.PathLike[str]) -> None:
    """Refuse (:class:`InputError`) a report folder whose set is incomplete or mixes runs.

    A folder without ``report-set.json`` (written by hand, or by an older grpo-check) is not judged.
    """
    import hashlib

    from grpo_check import limits

    folder = Path(directory)
    set_path = folder / SET_NAME
    if not set_path.exists():
        return
    record = limits.read_json(set_path, cap=limits.MiB, what="report set")
    files = record.get("files") if isinstance(record, dict) else None
    if not isinstance(record, dict) or record.get("format") != SET_FORMAT or not isinstance(files, dict):
        raise InputError(f"not a {SET_FORMAT} record", source=str(set_path))
    hint = (
        f"; the findings logged before it stopped are in {folder / PARTIAL_NAME}"
        if (folder / PARTIAL_NAME).is_file()
        else ""
    )
    if record.get("complete") is not True:
        raise InputError(
            f"incomplete report set (run {record.get('run_id')!s:.12}): the run was stopped while writing its "
            f"reports, so the files here may come from different runs{hint}",
            source=str(folder),
        )
    for name, entry in files.items():
        expected = entry.get("sha256") if isinstance(entry, dict) else None
        path = folder / str(name)
        if "/" in str(name) or not isinstance(expected, str):
            raise InputError("malformed file entry", source=str(set_path), field=str(name))
        try:
            actual = hashlib.sha256(limits.read_bytes(path, cap=limits.MAX_JSON_BYTES)).hexdigest()
        except FileNotFoundError:
            raise InputError(
                f"incomplete report set: {name} of run {record.get('run_id')!s:.12} is missing",
                source=str(folder),
            ) from None
        if actual != expected:
            raise InputError(
                f"mixed report set: {name} is not the one run {record.get('run_id')!s:.12} wrote (another run "
                "replaced it, or it was edited); rerun to write a consistent set",
                source=str(folder),
            )
