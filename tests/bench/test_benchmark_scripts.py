"""The scripts in ``benchmarks/`` that others build on keep their command-line contract (no timings asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_fixed_cost_json_gives_seconds_per_step_size() -> None:
    # ab_check_cost.py reads this line: {tokens: seconds} for the first --sizes step sizes
    out = subprocess.run(
        [sys.executable, str(BENCHMARKS / "fixed_cost.py"), "--json", "--sizes", "1", "--repeats", "2"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    points = json.loads(out.strip().splitlines()[-1])
    assert list(points) == ["48"]  # the demo-sized micro-batch: 8 rows x 6 tokens
    assert points["48"] > 0


def test_ab_check_cost_help_names_its_options() -> None:
    out = subprocess.run(
        [sys.executable, str(BENCHMARKS / "ab_check_cost.py"), "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for option in ("--before", "--runs", "--repeats", "--sizes", "--threads"):
        assert option in out
