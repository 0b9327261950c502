"""Renderers for :class:`grpo_check.findings.Result`: terminal, Markdown, HTML (with plots), JSON, JUnit XML.

Example::

    >>> import tempfile
    >>> from grpo_check.findings import Finding, Result, Where
    >>> result = Result([Finding("advantages.group_sum_zero", "advantages", "fail", figure=1.66,
    ...                          tolerance=1e-6, where=Where(step=0, prompt=3),
    ...                          explanation="group 3 advantages sum to 1.66 instead of 0")])
    >>> print(render(result, "text", color=False).splitlines()[0])
    grpo-check: FAIL - 1 fail
    >>> paths = write_report(result, tempfile.mkdtemp(), formats=("md", "json", "junit"))
    >>> sorted(paths)
    ['json', 'junit', 'md']

File names written by :func:`write_report`: ``report.md``, ``report.html``, ``result.json``,
``junit.xml``, ``report.txt``, and ``report-set.json`` (the run id and sha256 of each file: the files are
published as one set). Every file is written atomically.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from grpo_check.findings import Finding, InputError, Result
from grpo_check.report._validate import check_finding_record, check_metadata
from grpo_check.report.atomic import ResultWriter, check_report_set, publish_report_set, read_partial
from grpo_check.report.merge import merge_results
from grpo_check.report.repro import failing_step_indices, write_repro

FORMAT_ALIASES: dict[str, str] = {
    "text": "text",
    "terminal": "text",
    "txt": "text",
    "md": "md",
    "markdown": "md",
    "html": "html",
    "json": "json",
    "junit": "junit",
    "xml": "junit",
}
FILE_NAMES: dict[str, str] = {
    "text": "report.txt",
    "md": "report.md",
    "html": "report.html",
    "json": "result.json",
    "junit": "junit.xml",
}
DEFAULT_FORMATS: tuple[str, ...] = ("md", "html", "json", "junit")

__all__ = [
    "DEFAULT_FORMATS",
    "FILE_NAMES",
    "ResultWriter",
    "check_report_set",
    "failing_step_indices",
    "load_result",
    "merge_results",
    "normalise_format",
    "read_partial",
    "render",
    "write_report",
    "write_repro",
]


def normalise_format(fmt: str) -> str:
    """Canonical format name (``"markdown"`` → ``"md"``); :class:`InputError` for an unknown one."""
    canonical = FORMAT_ALIASES.get(fmt.lower())
    if canonical is None:
        raise InputError(f"unknown report format {fmt!r}; choose one of text, md, html, json, junit")
    return canonical


def render(result: Result, fmt: str = "text", *, color: bool = False, strict: bool = False) -> str:
    """Render ``result`` as ``fmt``: ``text`` (terminal), ``md``, ``html``, ``json`` or ``junit``.

    ``color`` applies to ``text``; ``strict`` makes JUnit count warnings as failures.
    """
    canonical = normalise_format(fmt)
    if canonical == "text":
        from grpo_check.report.terminal import render_terminal

        return render_terminal(result, color=color)
    if canonical == "md":
        from grpo_check.report.markdown import render_markdown

        return render_markdown(result)
    if canonical == "html":
        from grpo_check.report.html import render_html

        return render_html(result)
    if canonical == "json":
        return result.to_json() + "\n"
    from grpo_check.report.junit import render_junit

    return render_junit(result, strict=strict)


def make_output_dir(out_dir: str | os.PathLike[str]) -> Path:
    """Create the report directory ``out_dir``; :class:`InputError` naming it when that is impossible."""
    from grpo_check.trace.io import OutputPathError

    directory = Path(out_dir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise OutputPathError(
            "cannot create the report directory: it (or a parent) is a file", source=str(directory)
        ) from None
    except OSError as exc:
        raise OutputPathError(
            f"cannot create the report directory: {exc.strerror or exc}", source=str(directory)
        ) from None
    _probe_writable(directory)  # a read-only folder is found now, not after the work (or the training)
    return directory


def _probe_writable(directory: Path) -> None:
    """Create and remove a file in ``directory``: the one test of writability that holds for every user and
    file system (permissions, a read-only mount, a full quota)."""
    import tempfile

    from grpo_check.trace.io import OutputPathError

    try:
        fd, name = tempfile.mkstemp(prefix=".grpo-check-probe-", dir=directory)
    except OSError as exc:
        raise OutputPathError(
            f"cannot write in the report directory: {exc.strerror or exc}", source=str(directory)
        ) from None
    os.close(fd)
    os.unlink(name)


def write_report(
    result: Result,
    out_dir: str | os.PathLike[str] = "reports/latest",
    formats: Sequence[str] = DEFAULT_FORMATS,
) -> dict[str, Path]:
    """Write ``result`` in each of ``formats`` into ``out_dir`` as one set; returns format → path.

    The set is published as a whole (see :mod:`grpo_check.report.atomic`): every format is rendered before
    anything is written; ``report-set.json`` is first replaced by an entry saying a set with a fresh run id
    is being written, then each file is written atomically (``result.json`` first), and last
    ``report-set.json`` lists every file with its sha256. A folder never silently mixes two runs: a run
    killed half-way leaves a set marked incomplete, and ``grpo-check report DIR`` refuses it.
    """
    directory = make_output_dir(out_dir)
    order = sorted((normalise_format(fmt) for fmt in formats), key=lambda fmt: fmt != "json")
    texts = {fmt: render(result, fmt) for fmt in dict.fromkeys(order)}  # a renderer fails before any write
    with publish_report_set(directory) as publish:
        paths = {fmt: publish(FILE_NAMES[fmt], text) for fmt, text in texts.items()}
    return paths


def load_result(path: str | os.PathLike[str]) -> Result:
    """Read a ``result.json`` (``Result.to_json``) or a ``result.partial.jsonl`` log."""
    source = Path(path)
    if source.suffix == ".jsonl":
        return read_partial(source)
    from grpo_check import limits

    try:
        data = limits.loads_json(limits.read_text(source, cap=limits.MAX_JSON_BYTES), source=str(source))
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON ({exc})", source=str(source)) from None
    except UnicodeDecodeError as exc:
        raise InputError(f"not UTF-8 text ({exc})", source=str(source)) from None
    if not isinstance(data, dict):
        raise InputError("expected a JSON object (a grpo-check result)", source=str(source))
    return _result_from_dict(data, source)


_READABLE_FORMAT_VERSION = 1


def _result_from_dict(data: dict[str, Any], source: Path) -> Result:
    """``Result.from_dict`` with every malformation named: the field, and for a finding its index."""
    if data.get("format") != "grpo-check-result":
        raise InputError(
            "not a grpo-check result (missing 'format': 'grpo-check-result')",
            source=str(source),
            field="format",
        )
    version = data.get("format_version", 1)
    if not isinstance(version, int) or isinstance(version, bool):
        raise InputError(f"expected an integer, got {version!r}", source=str(source), field="format_version")
    if version > _READABLE_FORMAT_VERSION:
        raise InputError(
            f"written by a newer grpo-check (format_version {version}; this one reads up to "
            f"{_READABLE_FORMAT_VERSION}): upgrade grpo-check to read it",
            source=str(source),
            field="format_version",
        )
    findings = data.get("findings", [])
    if not isinstance(findings, list):
        raise InputError(
            f"expected a list of findings, got {type(findings).__name__}",
            source=str(source),
            field="findings",
        )
    metadata = data.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise InputError(
            f"expected an object, got {type(metadata).__name__}", source=str(source), field="metadata"
        )
    result = Result(metadata=check_metadata(metadata))
    for index, record in enumerate(findings):
        field = f"findings[{index}]"
        if not isinstance(record, dict):
            raise InputError(
                f"expected an object, got {type(record).__name__}", source=str(source), field=field
            )
        try:
            check_finding_record(record)
            result.add(Finding.from_dict(record))
        except KeyError as exc:
            raise InputError(f"missing key {exc.args[0]!r}", source=str(source), field=field) from None
        except (TypeError, ValueError) as exc:
            raise InputError(f"malformed finding ({exc})", source=str(source), field=field) from None
    result.metadata.setdefault("source", str(source))
    return result
