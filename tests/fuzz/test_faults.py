"""Faults: a run killed at a chosen point keeps every step it captured (each complete or absent), and a
later ``grpo-check compare TRACE`` checks them; an unwritable trace directory is found before training."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import fuzz_harness as h
import pytest

from grpo_check.findings import InputError
from grpo_check.trace.io import TraceWriter, load_trace

# Trains the example factory's trainer with grpo-check attached (out_dir streamed to) and kills itself with
# the chosen signal once the chosen optimizer step has been captured.
KILLED_RUN = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {root!r})
    from transformers import TrainerCallback
    from examples.train_factory import build_trainer
    from grpo_check.trl import attach

    kill_after, signame, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]

    class Kill(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= kill_after:
                os.kill(os.getpid(), getattr(signal, signame))

    trainer = build_trainer(steps=kill_after + 2)
    attach(trainer, out_dir=out, live=False)
    trainer.add_callback(Kill())
    trainer.train()
    print("not killed")
    """
)


@pytest.mark.slow
@pytest.mark.parametrize(("kill_after", "signame"), [(1, "SIGKILL"), (2, "SIGTERM")])
def test_a_killed_training_keeps_its_captured_steps(tmp_path: Path, kill_after: int, signame: str) -> None:
    script = tmp_path / "killed_run.py"
    script.write_text(KILLED_RUN.format(root=str(h.ROOT)))
    out = tmp_path / "trace"
    run = subprocess.run(
        [sys.executable, str(script), str(kill_after), signame, str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=h.ROOT,
        env={**__import__("os").environ, "PYTHONPATH": str(h.ROOT), "OMP_NUM_THREADS": "1"},
    )
    assert run.returncode == -getattr(signal, signame), run.stderr[-2000:]
    assert "not killed" not in run.stdout
    trace = load_trace(out)
    steps = {s.meta.get("step") for s in trace.steps if s.meta.get("scope") == "micro_batch"}
    assert set(range(kill_after)) <= steps  # every optimizer step finished before the kill is on disk
    assert any("the run did not close this trace" in p for p in trace.problems)
    assert json.loads((out / "manifest.json").read_text())["complete"] is False
    assert not [p for p in (out / "steps").iterdir() if p.name.startswith(".")]  # no half-written step
    checked = h.run_cli_subprocess(["compare", str(out), "-o", str(tmp_path / "report")], timeout=600)
    assert checked.returncode in (0, 1), checked.stderr[-2000:]
    assert "Traceback" not in checked.stderr
    result = json.loads((tmp_path / "report" / "result.json").read_text())
    assert result["findings"]


def test_a_step_is_complete_or_absent_when_a_write_is_cut(tmp_path: Path) -> None:
    import torch

    from grpo_check.trace.model import TraceStep

    writer = TraceWriter.open(tmp_path / "t", {"trainer": "unit"})
    writer.append_step(TraceStep(tensors={"loss": torch.tensor(1.0)}, meta={"step": 0}))
    # a kill between the tensor file and its .json: the tensor file has no commit record
    (tmp_path / "t" / "steps" / "000001-mb00-r0.safetensors").write_bytes(b"\0" * 16)
    # and a kill inside an atomic write leaves only a hidden temporary file
    (tmp_path / "t" / "steps" / ".000002-mb00-r0.json.abc.tmp").write_text("{")
    trace = load_trace(tmp_path / "t")
    assert [s.step for s in trace.steps] == [0]
    assert any("tensor file has no matching .json" in p for p in trace.problems)
    assert any("did not close this trace" in p and "1 complete step(s)" in p for p in trace.problems)
    writer.close()
    assert json.loads((tmp_path / "t" / "manifest.json").read_text())["complete"] is True
    with pytest.raises(InputError, match="was closed"):
        writer.append_step(TraceStep(tensors={"loss": torch.tensor(1.0)}, meta={"step": 1}))


def test_a_closed_trace_reports_no_problem(tmp_path: Path) -> None:
    h.write_valid_trace(tmp_path / "t", steps=2)
    trace = load_trace(tmp_path / "t", strict=True)
    assert len(trace.steps) == 2 and trace.problems == []


def test_an_unwritable_trace_directory_is_refused_before_any_step(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="a parent of this path is a file"):
        TraceWriter.open(tmp_path / "file" / "trace", {"trainer": "unit"})
    with pytest.raises(InputError, match="cannot create the trace directory"):
        TraceWriter.open("/proc/grpo-check-trace", {"trainer": "unit"})


# ------------------------------------------------------------------------------------------ report sets
# Writes a clean report set (run A), then starts writing a failing one (run B) and kills itself with SIGKILL
# after the chosen number of B's files is in place.
KILLED_REPORT = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {root!r})
    from grpo_check.findings import Finding, Result
    from grpo_check.report import write_report
    from grpo_check.report import atomic

    out, kill_after = sys.argv[1], int(sys.argv[2])
    write_report(Result([Finding("loss.finite", "loss", "pass")]), out)
    written = []
    original = atomic.atomic_write_bytes

    def counting(path, data):
        result = original(path, data)
        written.append(path)
        if len(written) == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    atomic.atomic_write_bytes = counting
    write_report(Result([Finding("loss.finite", "loss", "fail", explanation="run B")]), out)
    """
)


@pytest.mark.parametrize("kill_after", [1, 2, 3])
def test_a_report_set_cut_by_a_kill_is_refused_not_mixed(tmp_path: Path, kill_after: int) -> None:
    script = tmp_path / "killed_report.py"
    script.write_text(KILLED_REPORT.format(root=str(h.ROOT)))
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, str(script), str(out), str(kill_after)], capture_output=True, text=True
    )
    assert run.returncode == -signal.SIGKILL, run.stderr
    result = json.loads((out / "result.json").read_text())
    assert result["findings"][0]["verdict"] == "fail"  # result.json is written first: never a stale OK
    code, _, err = h.run_cli_in_process(["report", str(out)])
    assert code == 2 and err.startswith("error: ") and "incomplete report set" in err
    assert len(err.strip().splitlines()) == 1
    code, _, err = h.run_cli_in_process(["report", str(out / "result.json")])
    assert code == 2 and "incomplete report set" in err


def test_a_report_set_mixing_two_runs_is_refused(tmp_path: Path) -> None:
    from grpo_check.findings import Finding, Result
    from grpo_check.report import write_report

    write_report(Result([Finding("loss.finite", "loss", "pass")]), tmp_path / "a")
    write_report(Result([Finding("loss.finite", "loss", "fail")]), tmp_path / "b")
    code, _, _ = h.run_cli_in_process(["report", str(tmp_path / "a")])
    assert code == 0  # a whole set is read
    (tmp_path / "a" / "report.md").write_bytes((tmp_path / "b" / "report.md").read_bytes())
    code, _, err = h.run_cli_in_process(["report", str(tmp_path / "a")])
    assert code == 2 and "mixed report set: report.md is not the one run" in err
    (tmp_path / "a" / "report.md").unlink()
    code, _, err = h.run_cli_in_process(["report", str(tmp_path / "a")])
    assert code == 2 and "report.md of run" in err and "is missing" in err


def test_a_folder_without_a_set_record_is_read_as_before(tmp_path: Path) -> None:
    (tmp_path / "result.json").write_text(json.dumps({"format": "grpo-check-result", "findings": []}))
    code, _, err = h.run_cli_in_process(["report", str(tmp_path)])
    assert code == 0, err


def test_an_unwritable_report_folder_is_refused_before_training(tmp_path: Path) -> None:
    from grpo_check.report import make_output_dir

    with pytest.raises(InputError, match="cannot write in the report directory"):
        make_output_dir("/proc/self")  # exists, and nothing can be created in it (whoever runs the test)
    code, _, err = h.run_cli_in_process(
        [
            "compare",
            "--trainer",
            f"{h.ROOT / 'examples' / 'train_factory.py'}:build_trainer",
            "--steps",
            "1",
            "-o",
            "/proc/self",
        ]
    )
    assert code == 2 and "cannot write in the report directory" in err  # refused before the trainer was built
    assert make_output_dir(tmp_path / "new") == tmp_path / "new"
    assert list((tmp_path / "new").iterdir()) == []  # the probe leaves nothing behind
