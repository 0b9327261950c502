"""User mistakes with ``grpo-check report``: one line and exit 2, never a traceback or lost results.

Each test shows the mistake refused and the correct usage still working.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from grpo_check.findings import Finding, InputError, Result, Verdict, Where
from grpo_check.report import load_result, render, write_report

RENDERED_FORMATS = ("text", "md", "html", "junit")


def _cli(*args: str):
    from grpo_check.cli import app

    return CliRunner().invoke(app, ["report", *args])


def _refused(run, *needles: str) -> None:
    """Exit 2, one ``error:`` line naming ``needles``, no traceback, nothing on stdout."""
    assert run.exit_code == 2, run.output
    assert run.exception is None or isinstance(run.exception, SystemExit), run.exception
    assert "Traceback" not in run.output
    assert run.stdout == ""
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def _saved(directory: Path, rank: int = 0) -> Path:
    """A saved result with one failing finding (exit 1 when rendered)."""
    finding = Finding("loss.finite", "loss", Verdict.FAIL, where=Where(step=0), explanation="loss is NaN")
    return write_report(Result([finding], {"rank": rank}), directory, formats=("json",))["json"]


# ------------------------------------------------------------------ outputs that are inputs (defects 1, 2)


def _alias(original: Path, how: str) -> Path:
    """``original`` itself, or a symlink / hard link to it."""
    if how == "same path":
        return original
    alias = original.with_name(f"alias-{how.replace(' ', '-')}.json")
    try:
        alias.symlink_to(original.name) if how == "symlink" else os.link(original, alias)
    except OSError as exc:  # e.g. a file system without links
        pytest.skip(f"cannot make a {how}: {exc}")
    return alias


@pytest.mark.parametrize("how", ["same path", "symlink", "hard link"])
def test_output_that_is_the_input_is_refused(tmp_path: Path, how: str) -> None:
    saved = _saved(tmp_path)
    before = saved.read_bytes()
    given = _alias(saved, how)
    run = _cli(str(given), "--format", "html", "--output", str(saved))
    _refused(run, str(given), "--output", "is this input file", "choose another --output")
    assert saved.read_bytes() == before  # the saved result survives
    # correct usage: another output file
    out = tmp_path / "report.html"
    run = _cli(str(given), "--format", "html", "--output", str(out))
    assert run.exit_code == 1, run.output
    assert out.read_text().lstrip().lower().startswith("<!doctype html")
    assert saved.read_bytes() == before


def test_output_that_is_one_of_several_inputs_is_refused(tmp_path: Path) -> None:
    first, second = _saved(tmp_path / "r0", 0), _saved(tmp_path / "r1", 1)
    before = second.read_bytes()
    run = _cli(str(first), str(second), "--format", "json", "--output", str(second))
    _refused(run, str(second), "--output")
    assert second.read_bytes() == before


def test_out_dir_holding_an_input_is_refused_for_a_merge(tmp_path: Path) -> None:
    first, second = _saved(tmp_path / "r0", 0), _saved(tmp_path / "r1", 1)
    before = first.read_bytes()
    run = _cli(str(first), str(second), "--out-dir", str(tmp_path / "r0"))
    _refused(run, str(first), "--out-dir", "merged result", "choose another --out-dir")
    assert first.read_bytes() == before  # r0's own findings are kept
    assert sorted(p.name for p in (tmp_path / "r0").iterdir()) == [
        "report-set.json",
        "result.json",
    ]  # nothing new
    # correct usage: a new directory; the merge holds each rank's finding once
    run = _cli(str(first), str(second), "--out-dir", str(tmp_path / "merged"))
    assert run.exit_code == 1, run.output
    assert len(load_result(tmp_path / "merged" / "result.json")) == 2
    assert first.read_bytes() == before


def test_out_dir_holding_the_single_input_is_refused(tmp_path: Path) -> None:
    saved = _saved(tmp_path / "run")
    before = saved.read_bytes()
    run = _cli(
        str(tmp_path / "run"), "--out-dir", f"{tmp_path / 'run'}/"
    )  # a directory stands for result.json
    _refused(run, str(saved), "--out-dir")
    assert saved.read_bytes() == before
    run = _cli(str(tmp_path / "run"), "--out-dir", str(tmp_path / "run-rendered"))
    assert run.exit_code == 1, run.output
    assert (tmp_path / "run-rendered" / "report.md").is_file()


# -------------------------------------------------------------------- malformed saved results (defect 3)


def _finding(**changes: Any) -> dict[str, Any]:
    record = Finding(
        "loss.finite", "loss", Verdict.FAIL, where=Where(step=1, micro_batch=0, rank=0)
    ).to_dict()
    record.update(changes)
    return record


def _write_result(path: Path, findings: list[dict[str, Any]], metadata: Any = None) -> Path:
    payload = {"format": "grpo-check-result", "format_version": 1, "metadata": metadata, "findings": findings}
    path.write_text(json.dumps(payload))
    return path


def _write_log(path: Path, findings: list[dict[str, Any]], metadata: Any = None) -> Path:
    records = [{"type": "metadata", "metadata": metadata or {}}]
    records += [{"type": "finding", "finding": finding} for finding in findings]
    path.write_text("\n".join(json.dumps(record) for record in [*records, {"type": "end"}]) + "\n")
    return path


def _three_findings(bad: dict[str, Any]) -> list[dict[str, Any]]:
    """Enough same-stage findings that the renderers sort by the coordinates."""
    return [
        _finding(check_id="loss.a"),
        _finding(**{"check_id": "loss.b", **bad}),
        _finding(check_id="loss.c"),
    ]


BAD_WHERE = [
    ("step", "x"),
    ("step", [1]),
    ("micro_batch", "0"),
    ("rank", 1.5),
    ("prompt", {"a": 1}),
    ("generation", True),
    ("row", "3"),
    ("token", [0]),
]


@pytest.mark.parametrize(("coordinate", "value"), BAD_WHERE)
@pytest.mark.parametrize("fmt", RENDERED_FORMATS)
def test_malformed_where_coordinate_is_refused(tmp_path: Path, coordinate: str, value: Any, fmt: str) -> None:
    path = _write_result(tmp_path / "result.json", _three_findings({"where": {coordinate: value}}))
    run = _cli(str(path), "--format", fmt)
    _refused(run, str(path), "field 'findings[1]'", "malformed finding", f"where.{coordinate}")
    # correct usage: integer (or null) coordinates render
    good = _write_result(tmp_path / "good.json", _three_findings({"where": {coordinate: 2, "rank": None}}))
    run = _cli(str(good), "--format", fmt, "--no-color")
    assert run.exit_code == 1, run.output


@pytest.mark.parametrize("fmt", RENDERED_FORMATS)
def test_malformed_where_coordinate_in_a_log_is_refused(tmp_path: Path, fmt: str) -> None:
    path = _write_log(tmp_path / "result.partial.jsonl", _three_findings({"where": {"step": "a"}}))
    run = _cli(str(path), "--format", fmt)
    _refused(run, str(path), "field 'line 3'", "where.step")
    good = _write_log(tmp_path / "good.jsonl", _three_findings({"where": {"step": 0}}))
    run = _cli(str(good), "--format", fmt, "--no-color")
    assert run.exit_code == 1, run.output


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"where": {"color": 1}}, "unknown coordinate 'color'"),
        ({"where": {"token_id": "17"}}, "where.token_id"),
        ({"where": {"reward_function": 3}}, "where.reward_function"),
        ({"stage": 5}, "stage must be a string"),
        ({"check_id": ["loss"]}, "check_id must be a string"),
        ({"explanation": {"text": "x"}}, "explanation must be a string or null"),
        ({"details": "x"}, "details must be an object or null"),
    ],
)
def test_malformed_finding_fields_name_the_field(tmp_path: Path, changes: dict[str, Any], named: str) -> None:
    path = _write_result(tmp_path / "result.json", _three_findings(changes))
    with pytest.raises(InputError, match=named) as info:
        load_result(path)
    assert info.value.field == "findings[1]" and info.value.source == str(path)
    log = _write_log(tmp_path / "result.partial.jsonl", _three_findings(changes))
    with pytest.raises(InputError, match=named) as info:
        load_result(log)
    assert info.value.field == "line 3"


@pytest.mark.parametrize("metadata", [[[1, 2]], [["a", "b"]], "ab", 3])
@pytest.mark.parametrize("fmt", ["md", "html"])
def test_log_metadata_that_is_not_an_object_is_refused(tmp_path: Path, metadata: Any, fmt: str) -> None:
    path = tmp_path / "result.partial.jsonl"
    records = [{"type": "metadata", "metadata": metadata}, {"type": "finding", "finding": _finding()}]
    path.write_text("\n".join(json.dumps(record) for record in [*records, {"type": "end"}]) + "\n")
    run = _cli(str(path), "--format", fmt)
    _refused(run, str(path), "field 'line 1'", "metadata must be an object")
    good = _write_log(tmp_path / "good.jsonl", [_finding()], metadata={"trainer": "my-loop", "steps": 3})
    run = _cli(str(good), "--format", fmt)
    assert run.exit_code == 1, run.output
    assert "my-loop" in run.stdout


def test_result_metadata_that_is_not_an_object_is_refused(tmp_path: Path) -> None:
    path = _write_result(tmp_path / "result.json", [_finding()], metadata=[[1, 2]])
    _refused(_cli(str(path), "--format", "html"), str(path), "field 'metadata'")
    for metadata in (None, {"trainer": "my-loop"}):  # absent or an object: fine
        path = _write_result(tmp_path / "result.json", [_finding()], metadata=metadata)
        assert _cli(str(path), "--format", "html").exit_code == 1


def test_saved_results_still_round_trip(tmp_path: Path, mixed_result: Result) -> None:
    """Everything grpo-check writes passes the shape checks (every coordinate of Where is filled here)."""
    path = write_report(mixed_result, tmp_path, formats=("json",))["json"]
    loaded = load_result(path)
    assert [f.to_dict() for f in loaded] == [f.to_dict() for f in mixed_result]


# ----------------------------------------------------------------- raw HTML in the Markdown report (defect 4)


SCRIPT = "<script>alert(1)</script>"


def _hostile_result() -> Result:
    finding = Finding(
        "loss.finite",
        "loss",
        Verdict.FAIL,
        figure=1.0,
        tolerance=0.0,
        where=Where(step=0, reward_function="<img src=x onerror=alert(2)>"),
        explanation=f"loss is NaN {SCRIPT} & <b>bold</b>",
        likely_cause=f"cause {SCRIPT}",
        fix=f"fix {SCRIPT}",
    )
    metadata = {"source": "runs/<i>1</i>", "incomplete": "killed <u>now</u>", "trainer": "my`<b>`loop"}
    metadata["<summary>key</summary>"] = {"nested": "<em>x</em>"}  # shown in a JSON code block
    return Result([finding], metadata)


def test_markdown_escapes_raw_html_from_findings_and_metadata() -> None:
    text = render(_hostile_result(), "md")
    assert "<script>" not in text and "<img" not in text and "<b>bold" not in text
    assert "loss is NaN &lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in text
    assert "- **likely cause**: cause &lt;script&gt;" in text and "- **fix**: fix &lt;script&gt;" in text
    assert "> **Incomplete:** killed &lt;u&gt;now&lt;/u&gt;" in text
    assert "<details><summary>&lt;summary&gt;key&lt;/summary&gt;</summary>" in text
    assert "``my`<b>`loop``" in text  # code spans and blocks show their text verbatim; HTML is inert there
    assert '"nested": "<em>x</em>"' in text


def test_markdown_escaping_holds_once_rendered_as_html() -> None:
    """A Markdown renderer that passes raw HTML through (CommonMark) must not produce any live tag."""
    markdown_it = pytest.importorskip("markdown_it")
    page = markdown_it.MarkdownIt("commonmark").enable("table").render(render(_hostile_result(), "md"))
    assert (
        "<script" not in page
        and "<img" not in page
        and "<b>" not in page
        and "<em>" not in page
        and "<u>" not in page
    )
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # shown as text


def test_markdown_keeps_normal_text_as_it_was(mixed_result: Result) -> None:
    text = render(mixed_result, "md")
    assert "| `loss.finite` | loss | 1 |" in text
    assert "- **fix**: group rows with repeat_interleave(G)" in text
    assert (
        "**likely cause**: generations grouped with repeat instead of repeat_interleave (bug-catalog 6)"
        in text
    )
    assert "pipes and &lt;html&gt; &amp; stuff" in text
    assert "Checked: `traces/run1`" in text and "- **source**: `traces/run1`" in text
    assert "<details><summary>tolerances</summary>" in text and "```json" in text
