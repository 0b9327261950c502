"""merge_results, write_repro, the incremental ResultWriter, and the `grpo-check report` command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from grpo_check.findings import Finding, InputError, Result, Verdict, Where
from grpo_check.report import (
    ResultWriter,
    failing_step_indices,
    load_result,
    merge_results,
    read_partial,
    write_report,
    write_repro,
)
from grpo_check.report.atomic import PARTIAL_NAME
from grpo_check.trace.io import build_manifest, load_trace
from grpo_check.trace.model import Trace, TraceStep

# ----------------------------------------------------------------------------------------------- merge


def test_merge_tags_rank_and_source(mixed_result: Result) -> None:
    rank0 = Result(
        list(mixed_result.findings), metadata={"rank": 0, "source": "r0.json", "tolerances": {"a": 1}}
    )
    rank1 = Result(
        [Finding("loss.finite", "loss", Verdict.FAIL, where=Where(step=0))],
        metadata={"rank": 1, "source": "r1.json", "tolerances": {"a": 1}},
    )
    merged = merge_results([rank0, rank1])
    assert len(merged) == len(rank0) + len(rank1)
    assert merged.counts()["fail"] == rank0.counts()["fail"] + 1
    last = merged.findings[-1]
    assert (last.where.rank, last.details["source"]) == (1, "r1.json")
    # a finding that already names its rank keeps it; the others get the result's rank
    assert merged.findings[0].where.rank == 0
    assert all(f.details["source"] == "r0.json" for f in merged.findings[: len(rank0)])
    assert merged.metadata["tolerances"] == {"a": 1}  # agreed by all inputs
    assert [m["source"] for m in merged.metadata["sources"]] == ["r0.json", "r1.json"]
    # inputs are not mutated
    assert "source" not in rank1.findings[0].details and rank1.findings[0].where.rank is None


def test_merge_keeps_disagreeing_metadata_per_source() -> None:
    a = Result(metadata={"config": {"beta": 0.0}})
    b = Result(metadata={"config": {"beta": 0.1}})
    merged = merge_results([a, b], sources=["a", "b"])
    assert "config" not in merged.metadata
    assert [m["config"]["beta"] for m in merged.metadata["sources"]] == [0.0, 0.1]


# ----------------------------------------------------------------------------------------------- repro
def _trace(n_steps: int = 3) -> Trace:
    steps = [
        TraceStep(
            tensors={
                "completion_ids": torch.tensor([[4, 5], [6, 7]]),
                "completion_mask": torch.tensor([[1, 1], [1, 0]]),
                "group_index": torch.tensor([0, 0]),
                "logps": torch.full((2, 2), -0.5 - s),
            },
            completion_text=["a b", "c"],
            meta={"step": s, "micro_batch": 0, "rank": 0},
        )
        for s in range(n_steps)
    ]
    return Trace(manifest=build_manifest(trainer="unit", spec={"num_generations": 2}), steps=steps)


def test_repro_holds_only_the_failing_step(tmp_path: Path) -> None:
    trace = _trace()
    result = Result(
        [
            Finding(
                "logps.nonpositive", "logps", Verdict.FAIL, figure=0.3, where=Where(step=1, row=0, token=1)
            ),
            Finding("loss.finite", "loss", Verdict.PASS, where=Where(step=2)),
        ],
        metadata={"source": "traces/run1"},
    )
    assert failing_step_indices(trace, result) == [1]
    out = write_repro(trace, None, result, tmp_path / "repro")
    repro = load_trace(out, strict=True)
    assert [s.step for s in repro.steps] == [1]
    assert torch.equal(repro.steps[0]["logps"], trace.steps[1]["logps"])
    assert repro.manifest["config"] == trace.manifest["config"]
    assert repro.manifest["versions"] == trace.manifest["versions"]
    assert repro.manifest["repro"]["of"] == "traces/run1"
    readme = (out / "README.txt").read_text()
    assert f"grpo-check compare {out}" in readme
    assert "logps.nonpositive" in readme
    assert [f.check_id for f in load_result(out / "result.json").findings] == ["logps.nonpositive"]


def test_repro_with_explicit_steps_and_errors(tmp_path: Path) -> None:
    trace = _trace()
    out = write_repro(trace, [0, 2], Result(), tmp_path / "r")
    assert [s.step for s in load_trace(out).steps] == [0, 2]
    with pytest.raises(InputError, match="no step"):
        write_repro(
            trace, None, Result([Finding("x.y", "loss", "pass", where=Where(step=0))]), tmp_path / "r2"
        )
    with pytest.raises(InputError, match="out of range"):
        write_repro(trace, [9], Result(), tmp_path / "r3")


# ---------------------------------------------------------------------------------------------- writer
def test_result_writer_log_survives_a_kill(tmp_path: Path, mixed_result: Result) -> None:
    writer = ResultWriter(tmp_path / "out", metadata={"source": "traces/run1"})
    for finding in mixed_result.findings[:3]:
        writer.add(finding)
    # the process dies here: no close(); the log already holds every finding
    partial = read_partial(tmp_path / "out" / PARTIAL_NAME)
    assert [f.check_id for f in partial.findings] == [f.check_id for f in mixed_result.findings[:3]]
    assert partial.metadata["source"] == "traces/run1"
    # a torn last line (killed mid-write) is ignored
    with open(tmp_path / "out" / PARTIAL_NAME, "a") as handle:
        handle.write('{"type": "finding", "find')
    partial = read_partial(tmp_path / "out" / PARTIAL_NAME)
    assert len(partial.findings) == 3 and "torn" in partial.metadata["incomplete"]
    writer._handle.close()


def test_result_writer_renders_at_the_end(tmp_path: Path, mixed_result: Result) -> None:
    with ResultWriter(tmp_path / "out", formats=("json", "junit")) as writer:
        writer.extend(mixed_result.findings)
        writer.update_metadata(trainer="unit")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "junit.xml",
        "report-set.json",
        "result.json",
    ]
    loaded = load_result(tmp_path / "out" / "result.json")
    assert loaded.counts() == mixed_result.counts() and loaded.metadata["trainer"] == "unit"


def test_result_writer_on_exception_keeps_log_and_marks_incomplete(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), ResultWriter(tmp_path / "out", formats=("json",)) as writer:
        writer.add(Finding("loss.finite", "loss", Verdict.FAIL))
        raise RuntimeError("out of memory")
    assert (tmp_path / "out" / PARTIAL_NAME).exists()
    loaded = load_result(tmp_path / "out" / "result.json")
    assert "out of memory" in loaded.metadata["incomplete"] and len(loaded) == 1


def test_read_partial_rejects_garbage_in_the_middle(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('not json\n{"type": "metadata", "metadata": {}}\n')
    with pytest.raises(InputError) as info:
        read_partial(path)
    assert info.value.field == "line 1"


# ------------------------------------------------------------------------------------------------- CLI
def _cli(*args: str):
    from grpo_check.cli import app

    return CliRunner().invoke(app, ["report", *args])


def test_cli_renders_and_exits_by_verdict(tmp_path: Path, mixed_result: Result, clean_result: Result) -> None:
    failing = write_report(mixed_result, tmp_path / "fail", formats=("json",))["json"]
    clean = write_report(clean_result, tmp_path / "clean", formats=("json",))["json"]
    run = _cli(str(failing), "--no-color")
    assert run.exit_code == 1, run.output
    assert run.output.startswith("grpo-check: FAIL")
    run = _cli(str(tmp_path / "clean"))  # a report directory stands for its result.json
    assert run.exit_code == 0, run.output
    run = _cli(str(clean), "--format", "md")
    assert run.exit_code == 0 and run.output.startswith("# grpo-check report")


def test_cli_merges_and_writes_junit(tmp_path: Path, mixed_result: Result) -> None:
    import xml.etree.ElementTree as ET

    first = write_report(Result(mixed_result.findings, {"rank": 0}), tmp_path / "r0", formats=("json",))[
        "json"
    ]
    second = write_report(Result(mixed_result.findings, {"rank": 1}), tmp_path / "r1", formats=("json",))[
        "json"
    ]
    out = tmp_path / "junit.xml"
    run = _cli(str(first), str(second), "--format", "junit", "--output", str(out))
    assert run.exit_code == 1, run.output
    suite = ET.parse(out).getroot().find("testsuite")
    assert int(suite.get("failures")) == 2 * len(mixed_result.failures)
    # one testcase per failing/warning occurrence; one per check for the rest (both ranks together)
    aggregated = sum(
        len(mixed_result.by_verdict(v)) for v in ("pass", "convention", "not_captured", "inconclusive")
    )
    assert len(suite.findall("testcase")) == 2 * len(mixed_result) - aggregated


def test_cli_reads_a_partial_log(tmp_path: Path) -> None:
    writer = ResultWriter(tmp_path / "out")
    writer.add(Finding("loss.finite", "loss", Verdict.FAIL, explanation="loss is NaN"))
    run = _cli(str(tmp_path / "out"), "--format", "json")  # killed run: only the .jsonl exists
    writer._handle.close()
    assert run.exit_code == 1, run.output
    assert json.loads(run.stdout)["counts"]["fail"] == 1
    assert "incomplete" in run.stderr


@pytest.mark.parametrize(
    "content",
    [
        "{ not json",
        json.dumps({"format": "something-else"}),
        json.dumps({"format": "grpo-check-result", "findings": [{}]}),
    ],
)
def test_cli_unreadable_input_exits_2(tmp_path: Path, content: str) -> None:
    path = tmp_path / "result.json"
    path.write_text(content)
    run = _cli(str(path))
    assert run.exit_code == 2
    assert "result.json" in run.output and "Traceback" not in run.output


def test_cli_missing_file_and_bad_format(tmp_path: Path, clean_result: Result) -> None:
    run = _cli(str(tmp_path / "nope.json"))
    assert run.exit_code == 2 and "nope.json" in run.output
    path = write_report(clean_result, tmp_path, formats=("json",))["json"]
    run = _cli(str(path), "--format", "pdf")
    assert run.exit_code == 2 and "unknown report format 'pdf'" in run.output


# ------------------------------------------------------------------------------- user-mistake regressions


def test_partial_log_of_a_killed_run_is_incomplete_and_never_clean(tmp_path: Path) -> None:
    """A killed run with only passing findings so far used to render as `OK` with exit code 0."""
    writer = ResultWriter(tmp_path / "out")
    writer.add(Finding("loss.finite", "loss", Verdict.PASS))
    writer._handle.flush()  # killed here: close() never runs
    partial = read_partial(tmp_path / "out" / PARTIAL_NAME)
    assert "killed or crashed" in partial.metadata["incomplete"]
    run = _cli(str(tmp_path / "out"), "--no-color")
    writer._handle.close()
    assert run.exit_code == 1
    assert run.stdout.startswith("grpo-check: INCOMPLETE") and "INCOMPLETE:" in run.stdout


def test_closed_partial_log_is_complete(tmp_path: Path) -> None:
    with ResultWriter(tmp_path / "out", formats=("json",), keep_partial=True) as writer:
        writer.add(Finding("loss.finite", "loss", Verdict.PASS))
    assert "incomplete" not in read_partial(tmp_path / "out" / PARTIAL_NAME).metadata
    assert _cli(str(tmp_path / "out" / PARTIAL_NAME)).exit_code == 0


def test_merge_carries_incompleteness() -> None:
    merged = merge_results([Result(), Result(metadata={"incomplete": "killed"})], sources=["r0", "r1"])
    assert merged.metadata["incomplete"] == "r1: killed"


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"format": "grpo-check-result", "findings": "x"}, "findings"),
        ({"format": "grpo-check-result", "findings": [], "metadata": [1]}, "metadata"),
        (
            {
                "format": "grpo-check-result",
                "findings": [{"check_id": "a", "stage": "loss", "verdict": "fail"}, 3],
            },
            "findings[1]",
        ),
        ({"format": "grpo-check-result", "findings": [{"check_id": "a"}]}, "findings[0]"),
        ({"format": "grpo-check-result", "format_version": 99, "findings": []}, "format_version"),
    ],
)
def test_malformed_result_names_the_field(tmp_path: Path, payload: dict, field: str) -> None:
    path = tmp_path / "result.json"
    path.write_text(json.dumps(payload))
    with pytest.raises(InputError) as info:
        load_result(path)
    assert info.value.field == field and info.value.source == str(path)


def test_same_result_twice_is_refused(tmp_path: Path, mixed_result: Result) -> None:
    path = write_report(mixed_result, tmp_path, formats=("json",))["json"]
    run = _cli(str(path), str(tmp_path))  # the directory stands for the same result.json
    assert run.exit_code == 2 and "given twice" in run.output


@pytest.mark.parametrize("option", ["--output", "--out-dir"])
def test_unwritable_destination_exits_2_before_output(
    tmp_path: Path, mixed_result: Result, option: str
) -> None:
    path = write_report(mixed_result, tmp_path, formats=("json",))["json"]
    target = tmp_path if option == "--output" else path / "sub"  # a directory / a path under a file
    run = _cli(str(path), option, str(target))
    assert run.exit_code == 2, run.output
    assert run.exception is None or isinstance(run.exception, SystemExit)
    assert run.stdout == ""
    assert str(target) in run.stderr
