"""The README's first lines give the two commands (demo; tests), and CI runs the test command verbatim."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _first_commands() -> list[str]:
    head = (ROOT / "README.md").read_text(encoding="utf-8")[:1500]
    return re.findall(r"```bash\n(.+?)\n```", head)


def test_readme_opens_with_the_demo_and_test_commands():
    demo, tests = _first_commands()[:2]
    assert demo.endswith("grpo-check demo") and "pip install torch==2.13.0" in demo
    assert tests.endswith("pytest -q") and "pip install torch==2.13.0" in tests


def test_ci_runs_the_readme_test_command_verbatim():
    tests = _first_commands()[1]
    ci_lines = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert tests in ci_lines
