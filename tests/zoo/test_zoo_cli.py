"""``grpo-check zoo`` command line: listing, selection errors, and a small real run."""

from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from grpo_check.cli import app

runner = CliRunner()


def test_list_shows_mutants_and_controls():
    out = runner.invoke(app, ["zoo", "--list"])
    assert out.exit_code == 0
    assert "skillsbench-S1-S2-S3" in out.output and "ctl-grpo" in out.output


def test_unknown_only_is_a_usage_error():
    out = runner.invoke(app, ["zoo", "--only", "no-such-bug"])
    assert out.exit_code == 2
    assert "matches no zoo case" in out.output and "--list" in out.output


def test_bad_format_is_a_usage_error():
    assert runner.invoke(app, ["zoo", "--format", "xml"]).exit_code == 2


def test_help_does_not_import_torch():
    code = (
        "import sys; from grpo_check.cli import app; import grpo_check.cli.zoo; print('torch' in sys.modules)"
    )
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
    )


def test_json_scorecard_of_one_mutant_and_one_control():
    out = runner.invoke(
        app, ["zoo", "--only", "S2-adv-epsilon-1e4", "--only", "ctl-grpo", "--format", "json", "-q"]
    )
    card = json.loads(out.stdout)
    assert card["format"] == "grpo-check-zoo-scorecard"
    assert [c["id"] for c in card["cases"]] == ["S2-adv-epsilon-1e4", "ctl-grpo"]
    mutant, control = card["cases"]
    assert mutant["detected"] and mutant["first_divergence"]["stage"] == "advantages"
    assert not control["false_positive"]
    assert out.exit_code == (0 if all(card["targets_met"].values()) else 1)
