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


def test_a_crash_is_placed_in_the_user_s_code_not_in_a_library(tmp_path):
    from grpo_check.trl.runner import _where

    user = tmp_path / "train.py"
    user.write_text("import json\n\ndef build():\n    return json.loads('{')\n")
    namespace: dict = {}
    exec(compile(user.read_text(), str(user), "exec"), namespace)
    try:
        namespace["build"]()
    except ValueError as error:
        assert _where(error).endswith(f"(at {user}:4)")  # the innermost frames are the standard library's
        assert _where(error, user).endswith(f"(at {user}:4)")
        assert _where(error, name="SIGTERM").startswith("SIGTERM: Expecting property name")
    else:  # pragma: no cover
        raise AssertionError("json.loads('{') should raise")


def test_end_rank_leaves_with_the_code_and_flushes_what_was_printed():
    """The rank's exit code survives ``os._exit`` and buffered output is not lost (stdout is a pipe here)."""
    import subprocess
    import sys

    code = "from grpo_check.trl.runner import end_rank\nprint('written', end='')\nend_rank(3)\nprint('never')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == "written"
