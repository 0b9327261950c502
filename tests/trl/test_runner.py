"""run_factory / `grpo-check compare --trainer` with the example factory, and factory-reference errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from grpo_check.findings import InputError
from grpo_check.trl.runner import load_factory

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "train_factory.py"


def test_factory_reference_errors_are_input_errors(tmp_path):
    with pytest.raises(InputError, match=r"expected 'path/to/train\.py:build_trainer'"):
        load_factory("no-colon-here")
    with pytest.raises(InputError, match="no such file"):
        load_factory(str(tmp_path / "missing.py") + ":build")
    script = tmp_path / "train.py"
    script.write_text("def something_else():\n    return 1\n")
    with pytest.raises(InputError, match="has no function 'build_trainer'"):
        load_factory(f"{script}:build_trainer")


def test_a_factory_returning_something_else_is_rejected(tmp_path):
    from grpo_check.trl.runner import run_factory

    script = tmp_path / "train.py"
    script.write_text("def build_trainer(steps=1):\n    return object()\n")
    with pytest.raises(InputError, match="not a TRL GRPOTrainer"):
        run_factory(f"{script}:build_trainer", steps=1)


@pytest.mark.slow
def test_compare_trainer_runs_the_example_factory(tmp_path):
    pytest.importorskip("trl")
    from typer.testing import CliRunner

    from grpo_check.cli import app

    out_dir = tmp_path / "report"
    run = CliRunner().invoke(
        app, ["compare", "--trainer", f"{EXAMPLE}:build_trainer", "--steps", "2", "--output", str(out_dir)]
    )
    assert run.exit_code == 0, run.output
    assert (out_dir / "result.json").is_file()
    from grpo_check.trace.io import load_trace

    trace = load_trace(out_dir / "trace")
    scopes = [s.meta["scope"] for s in trace.steps]
    assert scopes.count("micro_batch") == 4 and scopes.count("generation") == 1  # 2 steps x GAS 2, spg 4
    assert trace.manifest["factory"].endswith("train_factory.py:build_trainer")
    assert not trace.problems
