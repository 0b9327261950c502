"""The compare walkthrough of docs/compare.md (examples/my_loop.py) runs, and grpo-check finds its grouping bug."""

from __future__ import annotations

import runpy
from pathlib import Path

from typer.testing import CliRunner

from grpo_check.cli import app

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "my_loop.py"


def test_walkthrough_finds_the_grouping_bug_first(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    outcome = CliRunner().invoke(
        app, ["compare", "traces/my-loop", "--format", "json", "-o", "reports/my-loop"]
    )
    assert outcome.exit_code == 1, outcome.output
    import json

    result = json.loads((tmp_path / "reports/my-loop/result.json").read_text())
    failing = [f for f in result["findings"] if f["verdict"] == "fail"]
    assert {f["stage"] for f in failing if not f["check_id"].startswith("e2e.")} == {"advantages"}
    assert any(f["check_id"] == "diagnose.grouping" and f["catalog_id"] == "6" for f in failing)
    assert (tmp_path / "reports/my-loop/repro/manifest.json").is_file()
