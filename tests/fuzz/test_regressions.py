"""Every crash and hang the fuzzing found, kept as a regression test: each input ends in a clean error
(InputError naming file and field; the CLI: exit 2 and one line) or is read, never a traceback or a hang."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import fuzz_harness as h
import pytest
import torch

from grpo_check.findings import Finding, InputError, Result, Where
from grpo_check.trace.io import load_trace


@pytest.fixture
def trace(tmp_path: Path) -> Path:
    return h.write_valid_trace(tmp_path / "trace")


def _edit_tensors(trace: Path, **tensors: torch.Tensor) -> Path:
    from safetensors.torch import load_file

    json_path, tensor_path = h.step_files(trace)
    stored = load_file(str(tensor_path))
    stored.update(tensors)
    h.write_safetensors(tensor_path, stored)
    h.unpin(json_path)
    return tensor_path


def _load_problems(trace: Path) -> str:
    with pytest.raises(InputError) as caught:
        load_trace(trace)
    return str(caught.value)


# ------------------------------------------------------------------------------------------- traces
def test_manifest_nested_100k_deep(trace: Path) -> None:
    (trace / "manifest.json").write_text(
        '{"format": "grpo-check-trace", "x": ' + "[" * 100_000 + "]" * 100_000 + "}"
    )
    with pytest.raises(InputError, match="nested 100001 levels deep; at most 100") as caught:
        load_trace(trace)
    assert caught.value.source == str(trace / "manifest.json")


def test_step_json_nested_100k_deep(trace: Path) -> None:
    json_path, _ = h.step_files(trace)
    json_path.write_text('{"meta": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert "nested 100001 levels deep" in _load_problems(trace)


def test_step_file_that_is_dev_zero_is_not_read(trace: Path) -> None:
    json_path, tensor_path = h.step_files(trace)
    tensor_path.unlink()
    tensor_path.symlink_to("/dev/zero")
    h.unpin(json_path)
    assert "not a regular file (a device)" in _load_problems(trace)


def test_step_file_that_is_a_fifo_does_not_hang(trace: Path) -> None:
    _, tensor_path = h.step_files(trace)
    tensor_path.unlink()
    os.mkfifo(tensor_path)
    outcome, _ = h.classify(lambda: load_trace(trace), seconds=10)
    assert outcome == "clean"
    assert "not a regular file (a pipe)" in _load_problems(trace)


def test_step_json_that_is_a_fifo_does_not_hang(trace: Path) -> None:
    json_path, _ = h.step_files(trace)
    json_path.unlink()
    os.mkfifo(json_path)
    assert h.classify(lambda: load_trace(trace), seconds=10)[0] == "clean"


def test_group_index_2_pow_40_does_not_allocate(trace: Path) -> None:
    from grpo_check.compare import check

    _edit_tensors(trace, group_index=torch.tensor([0, 0, 1, 2**40]))
    loaded = load_trace(trace)  # legal to store; the invariants judge it
    result = check(loaded)
    assert result.findings  # checked, not crashed


@pytest.mark.parametrize(
    ("dtype", "code"), [(torch.uint32, "U32"), (torch.uint64, "U64"), (torch.uint16, "U16")]
)
def test_group_index_unsigned_is_refused_naming_the_field(trace: Path, dtype: torch.dtype, code: str) -> None:
    _edit_tensors(trace, group_index=torch.tensor([0, 0, 1, 1], dtype=dtype))
    with pytest.raises(InputError, match=f"dtype '{code}' is not supported") as caught:
        load_trace(trace, strict=True)
    assert caught.value.field == "group_index"


def test_logps_grad_float8_is_refused(trace: Path) -> None:
    _edit_tensors(trace, logps_grad=torch.zeros(4, 5).to(torch.float8_e4m3fn))
    with pytest.raises(InputError, match="dtype 'F8_E4M3' is not supported") as caught:
        load_trace(trace, strict=True)
    assert caught.value.field == "logps_grad"


def test_tensors_listing_that_is_a_list(trace: Path) -> None:
    json_path, _ = h.step_files(trace)
    record = json.loads(json_path.read_text())
    record["tensors"] = [1, 2]
    json_path.write_text(json.dumps(record))
    assert "field 'tensors': must be a JSON object" in _load_problems(trace)


def test_nul_byte_in_a_tensor_name(trace: Path) -> None:
    json_path, tensor_path = h.step_files(trace)
    header = json.dumps({"loss\u0000x": {"dtype": "F32", "shape": [], "data_offsets": [0, 4]}}).encode()
    tensor_path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    h.unpin(json_path)
    assert "control character (NUL?)" in _load_problems(trace)


@pytest.mark.parametrize(
    ("header", "length", "expected"),
    [
        ({}, 2**62, "header claims 4611686018427387904 bytes"),
        (
            {"loss": {"dtype": "F32", "shape": [2**40], "data_offsets": [0, 4]}},
            None,
            "needs 4398046511104 bytes",
        ),
        ({"loss": {"dtype": "F32", "shape": [], "data_offsets": [0, 2**40]}}, None, "lie outside the file"),
        ({"loss": {"dtype": "F32", "shape": "x", "data_offsets": [0, 4]}}, None, "is not a list"),
        ([1, 2], None, "not a table"),
    ],
)
def test_safetensors_header_is_checked_against_the_real_size(
    trace: Path, header: object, length: int | None, expected: str
) -> None:
    json_path, tensor_path = h.step_files(trace)
    raw = json.dumps(header).encode()
    tensor_path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + b"\0" * 4)
    h.unpin(json_path)
    assert expected in _load_problems(trace)


def test_num_items_in_batch_abc_is_dropped_and_the_step_compared(trace: Path) -> None:
    from grpo_check.compare import compare

    json_path, _ = h.step_files(trace)
    record = json.loads(json_path.read_text())
    record["meta"]["num_items_in_batch"] = "abc"
    json_path.write_text(json.dumps(record))
    loaded = load_trace(trace)
    assert any("meta.num_items_in_batch" in p and "must be a finite number" in p for p in loaded.problems)
    assert "num_items_in_batch" not in loaded.steps[0].meta
    compare(loaded)


def test_num_generations_10_pow_30_is_refused(trace: Path) -> None:
    manifest = json.loads((trace / "manifest.json").read_text())
    manifest["config"]["num_generations"] = 10**30
    (trace / "manifest.json").write_text(json.dumps(manifest))
    from grpo_check.compare import compare

    with pytest.raises(InputError, match=r"num_generations.*must be at most 2147483647"):
        compare(load_trace(trace))


def test_integer_of_5000_digits_in_a_manifest(trace: Path) -> None:
    (trace / "manifest.json").write_text(
        '{"format": "grpo-check-trace", "format_version": ' + "9" * 5000 + "}"
    )
    with pytest.raises(InputError, match="an integer of 5000 digits; at most 40"):
        load_trace(trace)


def test_mistyped_manifest_versions_are_dropped(trace: Path) -> None:
    from grpo_check.compare import compare

    manifest = json.loads((trace / "manifest.json").read_text())
    manifest["versions"] = ["abc"]
    (trace / "manifest.json").write_text(json.dumps(manifest))
    loaded = load_trace(trace)
    assert any("field 'versions': must be an object" in p for p in loaded.problems)
    compare(loaded)


def test_lone_surrogate_in_the_manifest_still_writes_every_report(trace: Path, tmp_path: Path) -> None:
    manifest = json.loads((trace / "manifest.json").read_text())
    manifest["trainer"] = "\ud800x"
    (trace / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "out"
    run = h.run_cli_subprocess(["check", str(trace), "-o", str(out)])
    assert "Traceback" not in run.stderr and run.returncode in (0, 1), run.stderr
    for name in ("report.md", "report.html", "result.json", "junit.xml"):
        assert (out / name).is_file()
    assert "\\ud800x" in (out / "report.md").read_text()


# ------------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize(
    ("text", "suffix", "expected"),
    [
        ("a: &x [*x]\n", ".yaml", "recursive alias"),
        ("a: " + "[" * 10_000 + "]" * 10_000 + "\n", ".yaml", "nested more than 100 levels"),
        ('{"a": ' + "[" * 900 + "]" * 900 + "}", ".json", "nested 901 levels deep"),
        ("num_generations: " + "9" * 5000 + "\n", ".yaml", "an integer of 5000 characters"),
        ('{"num_generations": ' + "9" * 5000 + "}", ".json", "an integer of 5000 digits"),
        ("num_generations: 0x" + "f" * 5000 + "\n", ".yaml", "an integer of 5002 characters"),
        (
            "a: &a [x,x,x,x,x,x,x,x,x]\n"
            + "".join(
                f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 9) + "]\n"
                for i in range(9)
            ),
            ".yaml",
            "alias bomb",
        ),
    ],
)
def test_config_bounds(tmp_path: Path, text: str, suffix: str, expected: str) -> None:
    from grpo_check.audit.loader import load_file

    path = tmp_path / f"config{suffix}"
    path.write_text(text)
    outcome, detail = h.classify(lambda: load_file(path), seconds=10)
    assert outcome == "clean", detail
    with pytest.raises(InputError, match=expected) as caught:
        load_file(path)
    assert caught.value.source == str(path)


def test_config_that_is_a_fifo_does_not_hang(tmp_path: Path) -> None:
    from grpo_check.audit.loader import load_file

    path = tmp_path / "config.yaml"
    os.mkfifo(path)
    assert h.classify(lambda: load_file(path), seconds=10)[0] == "clean"


@pytest.mark.parametrize("fmt", ["text", "json", "sarif", "md", "table"])
def test_lone_surrogate_in_a_config_is_escaped_in_every_audit_format(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"num_generations": 8, "per_device_train_batch_size": 8, "\\ud800bad": 1}')
    code, out, err = h.run_cli_in_process(["audit", str(path), "--format", fmt])
    assert code in (0, 1) and "Traceback" not in err
    assert "\\ud800bad" in out or "\\\\ud800bad" in out


# ------------------------------------------------------------------------------------------- results
def test_report_of_dev_zero_is_refused(tmp_path: Path) -> None:
    code, _, err = h.run_cli_in_process(["report", "/dev/zero"])
    assert code == 2 and err.strip() == "error: /dev/zero: not a regular file (a device); refused"


def test_report_of_a_fifo_does_not_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "result.json"
    os.mkfifo(fifo)
    assert h.classify(h.cli_target(["report", str(fifo)]), seconds=10)[0] == "clean"


def test_report_of_nested_results_json(tmp_path: Path) -> None:
    path = tmp_path / "result.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    code, _, err = h.run_cli_in_process(["report", str(path)])
    assert code == 2 and "nested 100000 levels deep" in err and len(err.strip().splitlines()) == 1


def test_golden_file_nested_and_fifo(tmp_path: Path) -> None:
    from grpo_check.reference.golden import load_cases

    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(InputError, match="nested 100000 levels deep"):
        load_cases(tmp_path)
    (tmp_path / "deep.json").unlink()
    os.mkfifo(tmp_path / "pipe.json")
    assert h.classify(lambda: load_cases(tmp_path), seconds=10)[0] == "clean"


def _finding(**details: object) -> Finding:
    text = "\ud800x"
    return Finding(
        "loss.per_token",
        "loss",
        "fail",
        figure=1e308,
        tolerance=1e-300,
        explanation=text,
        likely_cause=text,
        fix=text,
        details=dict(details),
        where=Where(step=0, row=0, token=1),
    )


@pytest.mark.parametrize(
    "details",
    [
        {"values": [1e308, -1e308, 0.0], "reference_values": [1e308, -1e308, 1.0]},
        {"histogram": {"edges": [-1e308, 0, 1e308], "counts": [1, 2]}},
        {"token_error_map": [[1e308, -1e308], [0, 1e308]], "token_error_map_label": "\ud800"},
        {"values": [1.0, 2.0], "values_label": "\ud800"},
    ],
)
@pytest.mark.parametrize("fmt", ["html", "md", "json", "junit", "text"])
def test_renderers_take_huge_values_and_lone_surrogates(details: dict, fmt: str, tmp_path: Path) -> None:
    from grpo_check.report import render
    from grpo_check.trace.io import atomic_write_text

    text = render(Result(findings=[_finding(**details)], metadata={"source": "\ud800"}), fmt)
    atomic_write_text(tmp_path / f"report.{fmt}", text)  # escaped on the way out, not a crash
    written = (tmp_path / f"report.{fmt}").read_text(encoding="utf-8")
    assert "\\ud800" in written or "\ufffd" in written  # XML cannot hold the character: replaced


# ------------------------------------------------------------------------------------------- outputs
@pytest.mark.parametrize(
    "args",
    [
        ["audit", "--list-rules"],
        ["selfcheck", "--only", "adv-h01"],
        ["bench", "--only", "startup", "--rounds", "1"],
    ],
)
def test_stdout_on_a_full_disk_is_one_line_and_exit_2(args: list[str]) -> None:
    with open("/dev/full", "w") as full:
        run = h.run_cli_subprocess(args, stdout=full, timeout=300)
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: cannot write the output: No space left on device"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["compare", "--bogus"], "error: No such option: --bogus (see 'grpo-check compare --help')"),
        (["nope"], "error: No such command 'nope' (see 'grpo-check --help')"),
        (["report"], "error: Missing argument 'RESULT' (see 'grpo-check report --help')"),
    ],
)
def test_usage_errors_are_one_line(args: list[str], expected: str) -> None:
    code, out, err = h.run_cli_in_process(args)
    assert code == 2 and err.strip() == expected and out == ""


def test_regular_file_check_does_not_open_a_fifo(tmp_path: Path) -> None:
    from grpo_check import limits

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(limits.LimitError, match="a pipe"):
        limits.read_bytes(fifo, cap=10)
    big = tmp_path / "big"
    big.write_bytes(b"x" * 11)
    with pytest.raises(limits.LimitError, match="11 bytes; at most 10"):
        limits.read_bytes(big, cap=10)
    assert limits.read_bytes(big, cap=11) == b"x" * 11


@pytest.mark.parametrize(
    ("figure", "tolerance"), [(1e308, 1.0), (-1e308, 1e-3), (1e200, 1e-200), (5e-324, 1e308)]
)
def test_stage_plot_takes_extreme_figure_to_tolerance_ratios(figure: float, tolerance: float) -> None:
    from grpo_check.report import render

    result = Result(
        [
            Finding("loss.per_token", "loss", "fail", figure=figure, tolerance=tolerance),
            Finding("advantages.group_sum_zero", "advantages", "warn", figure=1e-300, tolerance=1e300),
        ]
    )
    assert "data:image/png;base64," in render(result, "html")
