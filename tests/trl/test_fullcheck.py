"""`grpo-check compare --trainer` is the full check: the reference's own forward passes run live, coverage is
reported, a buggy log-prob helper fails (stage logps, diagnosed) and its faithful twin is clean, a trainer
that crashes or is interrupted has its own exit code and what was captured is still compared and saved."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

FACTORIES = Path(__file__).resolve().parent / "fullcheck_factories.py"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "train_factory.py"


def _cli(args: list[str], **env: str):
    pytest.importorskip("trl")
    from typer.testing import CliRunner

    from grpo_check.cli import app

    return CliRunner().invoke(app, args, env=env or None)


def _families(out_dir: Path) -> dict[str, dict]:
    result = json.loads((out_dir / "result.json").read_text())
    return {f["id"]: f for f in result["metadata"]["coverage"]["families"]}


def test_the_example_runs_every_core_check_live_and_offline_with_the_recorded_model(tmp_path):
    out = tmp_path / "live"
    run = _cli(["compare", "--trainer", f"{EXAMPLE}:build_trainer", "--steps", "2", "-o", str(out)])
    assert run.exit_code == 0, run.output
    assert run.stdout.startswith("grpo-check: OK - ")
    families = _families(out)
    for family in ("advantages", "forward_logps", "ref_forward", "loss", "loss_grad", "invariants"):
        assert families[family]["status"] == "ran", families[family]
    assert "ran      forward log-probs" in run.stdout and "ran      reference-model forward" in run.stdout
    result = json.loads((out / "result.json").read_text())
    assert not [f for f in result["findings"] if f["verdict"] == "not_captured"]
    trace = out / "trace"
    recorded = json.loads((trace / "manifest.json").read_text())["model"]
    assert Path(recorded["policy"]).is_dir() and recorded["ref_model"] == recorded["policy"]

    offline = _cli(["compare", str(trace), "-o", str(tmp_path / "offline")])
    assert offline.exit_code == 0, offline.output
    assert offline.stdout.startswith(
        "grpo-check: OK (partial: forward log-probs, reference-model forward not checked — no model; pass --model "
        "and --ref-model)"
    )
    assert f"pass --model {recorded['policy']}" in offline.stdout

    args = ["compare", str(trace), "--model", recorded["policy"], "--ref-model", recorded["ref_model"]]
    with_model = _cli([*args, "-o", str(tmp_path / "with-model")])
    assert with_model.exit_code == 0, with_model.output
    assert with_model.stdout.startswith("grpo-check: OK - ")
    assert _families(tmp_path / "with-model")["forward_logps"]["status"] == "ran"

    missing = _cli(["compare", str(trace), "--model", str(tmp_path / "nowhere"), "-o", str(tmp_path / "m")])
    assert missing.exit_code == 2 and "not a directory" in missing.stderr


@pytest.mark.parametrize(
    ("factory", "catalog_id"),
    [("helper_no_temperature", "1"), ("helper_off_by_one", "X-shift"), ("helper_faithful", None)],
)
def test_a_log_prob_helper_subclass_is_checked_by_the_reference_forward(tmp_path, factory, catalog_id):
    out = tmp_path / "r"
    run = _cli(["compare", "--trainer", f"{FACTORIES}:{factory}", "--steps", "1", "-o", str(out)])
    result = json.loads((out / "result.json").read_text())
    failing = [f for f in result["findings"] if f["verdict"] == "fail"]
    if catalog_id is None:
        assert run.exit_code == 0, run.output
        assert not failing and not [f for f in result["findings"] if f["verdict"] == "warn"]
        return
    assert run.exit_code == 1, run.output
    assert {f["stage"] for f in failing} == {"logps"}
    assert {"logps.model", "logps.ref_model"} <= {f["check_id"] for f in failing}
    first = next(f for f in failing if f["check_id"] == "logps.model")
    assert first["catalog_id"] == catalog_id and first["likely_cause"]
    assert "First divergence\n[FAIL] logps.model (logps)" in run.stdout


def _line_of(text: str, path: Path) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


@pytest.mark.parametrize(
    ("stop", "code", "line"),
    [
        (
            "raise",
            3,
            "training crashed after 1 optimizer step: RuntimeError: reward server down (at {file}:{n})",
        ),
        ("SIGINT", 130, "training interrupted after 1 optimizer step: SIGINT (at {file}:{n})"),
        ("SIGTERM", 143, "training interrupted after 1 optimizer step: SIGTERM (at {file}:{n})"),
    ],
)
def test_a_crash_or_interrupt_is_its_own_outcome_and_what_was_captured_is_compared(
    tmp_path, stop, code, line
):
    out = tmp_path / "r"
    args = ["compare", "--trainer", f"{FACTORIES}:stops_in_second_step", "--steps", "2", "-o", str(out)]
    run = _cli(args, GRPO_CHECK_TEST_STOP=stop)
    assert run.exit_code == code, run.output
    where = 'raise RuntimeError("reward server down")' if stop == "raise" else "os.kill(os.getpid()"
    shown = (
        FACTORIES.relative_to(Path.cwd()) if FACTORIES.is_relative_to(Path.cwd()) else FACTORIES
    )  # as typed
    expected = line.format(file=shown, n=_line_of(where, FACTORIES))
    assert run.stderr.strip().splitlines()[-1] == f"error: {expected}"
    assert "Traceback" not in run.output
    result = json.loads((out / "result.json").read_text())
    assert result["metadata"]["outcome"]["exit_code"] == code
    stages = ("advantages.", "logps.", "loss.", "grad.")
    compared = {f["where"].get("step") for f in result["findings"] if f["check_id"].startswith(stages)}
    assert compared == {0} and not [f for f in result["findings"] if f["verdict"] == "fail"]
    assert run.stdout.startswith(f"grpo-check: {'CRASHED' if code == 3 else 'INTERRUPTED'} (")
    from grpo_check.trace.io import load_trace

    trace = load_trace(out / "trace")
    assert [s.meta["scope"] for s in trace.steps] == ["generation", "micro_batch"]
    assert trace.manifest["outcome"]["status"] == ("crashed" if code == 3 else "interrupted")


def test_a_core_check_that_could_not_run_with_the_model_at_hand_is_incomplete(tmp_path, monkeypatch):
    import grpo_check.compare.stage_findings as stage_findings

    # no forward pass can score a row
    monkeypatch.setattr(stage_findings, "model_logps", lambda *args, **kwargs: None)
    out = tmp_path / "r"
    args = ["compare", "--trainer", f"{EXAMPLE}:build_trainer", "--steps", "1", "-o", str(out)]
    run = _cli(args)
    assert run.exit_code == 4, run.output
    assert run.stdout.startswith(
        "grpo-check: INCOMPLETE (forward log-probs, reference-model forward not checked — not captured: missing"
    )
    assert _families(out)["forward_logps"]["gap"] is True
    accepted = _cli([*args, "--allow-partial"])
    assert accepted.exit_code == 0, accepted.output
    assert accepted.stdout.startswith("grpo-check: OK (partial: forward log-probs, reference-model forward")


@pytest.mark.slow
def test_a_killed_compare_trainer_keeps_every_captured_step_on_disk(tmp_path):
    """SIGKILL cannot be caught: what ``compare --trainer`` captured before it must already be on disk, and a
    later ``compare TRACE`` checks it."""
    import os
    import subprocess
    import sys

    pytest.importorskip("trl")
    from grpo_check.trace.io import load_trace

    out = tmp_path / "killed"
    env = {**os.environ, "GRPO_CHECK_TEST_STOP": "SIGKILL", "OMP_NUM_THREADS": "1"}
    args = ["compare", "--trainer", f"{FACTORIES}:stops_in_second_step", "--steps", "2", "-o", str(out)]
    run = subprocess.run(
        [sys.executable, "-m", "grpo_check", *args], env=env, capture_output=True, timeout=600
    )
    assert run.returncode == -9, run.stderr.decode()[-2000:]
    trace = load_trace(out / "trace")
    assert trace.steps, "nothing captured before the kill reached the disk"
    assert any("not close" in problem or "complete" in problem for problem in map(str, trace.problems))
    again = _cli(["compare", str(out / "trace"), "-o", str(tmp_path / "after")])
    assert again.exit_code in (0, 1), again.output
