"""``grpo-check check`` and ``grpo-check compare`` on traces written with grpo_check.trace.io: exit codes
0 clean / 1 findings / 2 usage or input error, reports written, repro on failure."""

from __future__ import annotations

import json

import pytest
from diagnose_mutants import grad_scaled, regrouped
from typer.testing import CliRunner

from grpo_check.cli import app
from grpo_check.compare.synthetic import make_trace
from grpo_check.config import GRPOSpec
from grpo_check.trace.io import save_trace

SPEC = GRPOSpec(num_generations=4, loss_type="dapo", gradient_accumulation_steps=4, max_completion_length=6)
runner = CliRunner()


@pytest.fixture
def good(tmp_path):
    return save_trace(make_trace(SPEC, steps=2), tmp_path / "good")


@pytest.fixture
def bad(tmp_path):
    trace = make_trace(SPEC, steps=2)
    broken = grad_scaled(SPEC, 4.0, seed=1)
    broken.meta["step"] = 2
    trace.steps[1] = broken
    return save_trace(trace, tmp_path / "bad")


def test_compare_clean_trace_exit_0(good, tmp_path):
    out = tmp_path / "reports"
    res = runner.invoke(app, ["compare", str(good), "--output", str(out)])
    assert res.exit_code == 0, res.output
    assert {"report.md", "report.html", "result.json", "junit.xml"} <= {p.name for p in out.iterdir()}
    data = json.loads((out / "result.json").read_text())
    assert data["metadata"]["tolerances"]["reference_dtype"] == "float64"
    assert not (out / "repro").exists()


def test_compare_broken_trace_exit_1_with_diagnosis_and_repro(bad, tmp_path):
    out = tmp_path / "reports"
    res = runner.invoke(app, ["compare", str(bad), "--output", str(out), "--format", "json"])
    assert res.exit_code == 1, res.output
    data = json.loads((out / "result.json").read_text())
    diag = [f for f in data["findings"] if f["kind"] == "diagnosis" and f["verdict"] == "fail"]
    assert [f["catalog_id"] for f in diag] == ["4"] and diag[0]["where"]["step"] == 2
    assert (out / "repro" / "manifest.json").exists()
    replay = runner.invoke(app, ["compare", str(out / "repro"), "--output", str(tmp_path / "replay")])
    assert replay.exit_code == 1


def test_compare_against_other_trace(good, bad, tmp_path):
    same = runner.invoke(app, ["compare", str(good), "--against", str(good), "-o", str(tmp_path / "a")])
    assert same.exit_code == 0, same.output
    differ = runner.invoke(app, ["compare", str(bad), "--against", str(good), "-o", str(tmp_path / "b")])
    assert differ.exit_code == 1
    assert "trace.logps_grad" in differ.output


def test_tolerance_option(bad, tmp_path):
    loose = ["--tolerance", "grad.logps_grad=10,1", "--tolerance", "loss.value=10,1", "--tolerance", "e2e.loss=10,1",
             "--tolerance", "e2e.logps_grad=10,1", "--no-invariants"]  # fmt: skip
    res = runner.invoke(app, ["compare", str(bad), "-o", str(tmp_path / "r"), *loose])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["compare", str(bad), "-o", str(tmp_path / "r"), "--tolerance", "nonsense"])
    assert res.exit_code == 2 and "CHECK=RTOL,ATOL" in res.output


@pytest.mark.parametrize(
    "args",
    [
        ["compare", "/nonexistent/trace"],
        ["check", "/nonexistent/trace"],
        ["compare"],
        ["compare", "x", "--format", "pdf"],
    ],
)
def test_usage_errors_exit_2(args, tmp_path):
    res = runner.invoke(app, [*args, "--output", str(tmp_path / "r")])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output


def test_trainer_and_trace_are_exclusive(good, tmp_path):
    res = runner.invoke(app, ["compare", str(good), "--trainer", "x.py:f", "-o", str(tmp_path / "r")])
    assert res.exit_code == 2


def test_check_exit_codes(good, tmp_path):
    res = runner.invoke(app, ["check", str(good), "--output", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    trace = make_trace(SPEC, steps=1)
    trace.steps[0] = regrouped(SPEC)
    broken = save_trace(trace, tmp_path / "regrouped")
    res = runner.invoke(app, ["check", str(broken), "--output", str(tmp_path / "c2"), "--format", "md"])
    assert res.exit_code == 1
    assert "advantages" in res.output


def test_help_has_examples():
    for command in ("compare", "check"):
        res = runner.invoke(app, [command, "--help"])
        assert res.exit_code == 0 and "Examples" in res.output and "Exit codes" in res.output


def test_trainer_option_runs_factory_and_compares(monkeypatch, tmp_path):
    import grpo_check.trl.runner as runner_module

    calls = {}

    def fake_check_factory(factory_ref, steps, out_dir=None, **_):
        from grpo_check.compare import compare

        calls.update(factory_ref=factory_ref, steps=steps, out_dir=out_dir)
        print("{'loss': '0.0103'}")  # what TRL's trainer prints while it trains
        trace = make_trace(SPEC, steps=steps)
        return runner_module.CheckedRun(
            result=compare(trace), trace=trace, outcome=runner_module.RunOutcome()
        )

    monkeypatch.setattr(runner_module, "check_factory", fake_check_factory)
    monkeypatch.setattr(runner_module, "load_factory", lambda reference: None)
    out = tmp_path / "r"
    args = ["compare", "--trainer", "train.py:build_trainer", "--steps", "1", "-o", str(out), "-f", "json"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert calls["factory_ref"] == "train.py:build_trainer" and calls["steps"] == 1
    assert (out / "result.json").exists() and (out / "trace" / "manifest.json").exists()
    assert json.loads(res.stdout)["format"] == "grpo-check-result"  # the trainer's lines went to stderr
    assert "'loss'" in res.stderr
    again = runner.invoke(app, args)  # the trace an earlier run left is replaced, not an error
    assert again.exit_code == 0, again.output


def test_trainer_option_checks_the_factory_and_the_output_before_training(monkeypatch, tmp_path):
    import grpo_check.trl.runner as runner_module

    trained = []
    monkeypatch.setattr(runner_module, "check_factory", lambda *args, **kwargs: trained.append(1))
    factory = tmp_path / "train.py"
    factory.write_text("def build_trainer():\n    raise RuntimeError('no GPU here')\n")
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    res = runner.invoke(app, ["compare", "--trainer", f"{factory}:nosuch", "-o", str(tmp_path / "r")])
    assert res.exit_code == 2 and "has no function 'nosuch'" in res.stderr
    res = runner.invoke(app, ["compare", "--trainer", f"{factory}:build_trainer", "-o", str(a_file / "r")])
    assert res.exit_code == 2 and "is a file" in res.stderr
    assert trained == []
    broken = tmp_path / "broken.py"
    broken.write_text("def build_trainer(:\n")
    res = runner.invoke(app, ["compare", "--trainer", f"{broken}:build_trainer", "-o", str(tmp_path / "r")])
    assert res.exit_code == 2 and "syntax error at line 1" in res.stderr


def test_a_factory_that_returns_the_class_is_told_so(tmp_path):
    from grpo_check.findings import InputError
    from grpo_check.trl.runner import build_from_factory

    factory = tmp_path / "train.py"
    factory.write_text("from trl import GRPOTrainer\n\ndef build_trainer():\n    return GRPOTrainer\n")
    with pytest.raises(InputError, match="returned the class GRPOTrainer, not an instance of it"):
        build_from_factory(f"{factory}:build_trainer", steps=1)


def test_a_factory_that_raises_is_named_with_its_line(tmp_path):
    from grpo_check.trl.runner import FactoryCrashed, build_from_factory

    factory = tmp_path / "train.py"
    factory.write_text("def build_trainer():\n    raise RuntimeError('no GPU here')\n")
    with pytest.raises(FactoryCrashed, match=rf"raised RuntimeError: no GPU here \(at {factory}:2\)"):
        build_from_factory(f"{factory}:build_trainer", steps=1)
    res = runner.invoke(app, ["compare", "--trainer", f"{factory}:build_trainer", "-o", str(tmp_path / "r")])
    assert res.exit_code == 3, res.output
    assert (
        res.stderr.strip()
        == f"error: {factory}:build_trainer raised RuntimeError: no GPU here (at {factory}:2)"
    )


def test_an_output_that_cannot_be_written_is_refused_before_comparing(good, tmp_path, monkeypatch):
    import grpo_check.compare as compare_module

    compared = []
    monkeypatch.setattr(compare_module, "compare", lambda *args, **kwargs: compared.append(1))
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    for command in ("compare", "check"):
        res = runner.invoke(app, [command, str(good), "-o", str(a_file)])
        assert res.exit_code == 2 and "is a file" in res.output, res.output
    assert compared == []


def test_trainer_option_not_available(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "grpo_check.trl.runner", None)
    res = runner.invoke(app, ["compare", "--trainer", "train.py:build_trainer", "-o", str(tmp_path / "r")])
    assert res.exit_code == 2 and "not available" in res.output


def test_options_that_would_be_ignored_or_destructive_are_refused(good, tmp_path):
    res = runner.invoke(app, ["compare", str(good), "--steps", "3", "-o", str(tmp_path / "r")])
    assert res.exit_code == 2 and "--steps applies to --trainer" in res.output
    twice = ["--tolerance", "logps=1e-3,0", "--tolerance", "logps=1e-2,0"]
    res = runner.invoke(app, ["compare", str(good), *twice, "-o", str(tmp_path / "r")])
    assert res.exit_code == 2 and "--tolerance logps is given twice" in res.output
    for command in ("compare", "check"):  # reports inside the trace would be read back as broken steps
        res = runner.invoke(app, [command, str(good), "-o", str(good / "steps")])
        assert res.exit_code == 2 and "is inside the trace" in res.output, res.output
    assert runner.invoke(app, ["compare", str(good), "-o", str(tmp_path / "r")]).exit_code == 0


def test_a_reader_that_stops_early_costs_neither_the_exit_code_nor_the_repro(bad, tmp_path):
    import shutil
    import subprocess

    exe = shutil.which("grpo-check")
    out = tmp_path / "r"
    shell = f"'{exe}' compare '{bad}' -o '{out}' 2>&1 | head -1 >/dev/null; exit ${{PIPESTATUS[0]}}"
    done = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    assert (out / "result.json").exists() and (out / "repro" / "manifest.json").exists()


def _fake_trainer_run(monkeypatch, behaviour):
    """``check_factory`` replaced: ``behaviour(out_dir, steps)`` returns the run or raises."""
    import grpo_check.trl.runner as runner_module

    monkeypatch.setattr(
        runner_module, "check_factory", lambda ref, steps, out_dir=None, **_: behaviour(out_dir, steps)
    )
    monkeypatch.setattr(runner_module, "load_factory", lambda reference: None)
    return runner_module


def _checked_run(runner_module, steps):
    from grpo_check.compare import compare

    trace = make_trace(SPEC, steps=steps)
    return runner_module.CheckedRun(result=compare(trace), trace=trace, outcome=runner_module.RunOutcome())


def test_an_earlier_trainer_runs_trace_survives_a_factory_that_fails(monkeypatch, tmp_path):
    runner_module = _fake_trainer_run(monkeypatch, lambda out_dir, steps: _checked_run(runner_module, steps))
    out = tmp_path / "r"
    args = ["compare", "--trainer", "train.py:build_trainer", "--steps", "2", "-o", str(out)]
    assert runner.invoke(app, args).exit_code == 0
    earlier = (out / "trace" / "manifest.json").read_text()

    def crashes(out_dir, steps):
        raise runner_module.FactoryCrashed("build_trainer raised RuntimeError: no GPU here")

    monkeypatch.setattr(
        runner_module, "check_factory", lambda ref, steps, out_dir=None, **_: crashes(out_dir, steps)
    )
    res = runner.invoke(app, args)
    assert res.exit_code == 3 and "no GPU here" in res.stderr
    assert (out / "trace" / "manifest.json").read_text() == earlier  # put back, whole
    assert not (out / "trace.earlier").exists()


def test_a_new_trainer_run_replaces_the_earlier_trace_once_saved(monkeypatch, tmp_path):
    runner_module = _fake_trainer_run(monkeypatch, lambda out_dir, steps: _checked_run(runner_module, steps))
    out = tmp_path / "r"
    assert (
        runner.invoke(app, ["compare", "--trainer", "t.py:f", "--steps", "2", "-o", str(out)]).exit_code == 0
    )
    seen = []

    def sees_the_earlier_trace_aside(out_dir, steps):
        seen.append((out / "trace.earlier" / "manifest.json").is_file() and not (out / "trace").exists())
        return _checked_run(runner_module, steps)

    monkeypatch.setattr(
        runner_module,
        "check_factory",
        lambda ref, steps, out_dir=None, **_: sees_the_earlier_trace_aside(out_dir, steps),
    )
    res = runner.invoke(app, ["compare", "--trainer", "t.py:f", "--steps", "1", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert seen == [True]
    from grpo_check.trace.io import load_trace

    one, two = len(make_trace(SPEC, steps=1).steps), len(make_trace(SPEC, steps=2).steps)
    assert one != two and len(load_trace(out / "trace").steps) == one  # the new run's
    assert not (out / "trace.earlier").exists()


def test_a_trace_left_aside_by_a_killed_run_is_never_overwritten(monkeypatch, tmp_path):
    runner_module = _fake_trainer_run(monkeypatch, lambda out_dir, steps: _checked_run(runner_module, steps))
    out = tmp_path / "r"
    args = ["compare", "--trainer", "t.py:f", "--steps", "2", "-o", str(out)]
    assert runner.invoke(app, args).exit_code == 0
    save_trace(make_trace(SPEC, steps=1), out / "trace.earlier")  # what a killed run would leave
    left = (out / "trace.earlier" / "manifest.json").read_text()
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "trace.earlier" in res.stderr and "move or delete it" in res.stderr
    assert (out / "trace.earlier" / "manifest.json").read_text() == left
    assert (out / "trace" / "manifest.json").is_file()
