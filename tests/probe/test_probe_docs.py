"""docs/probing.md lists every branch and every diagnosis probing knows."""

from __future__ import annotations

from pathlib import Path

from grpo_check.probe.branches import BRANCHES
from grpo_check.probe.diagnose import VARIANTS

DOC = Path(__file__).resolve().parents[2] / "docs" / "probing.md"


def test_every_branch_and_diagnosis_is_documented():
    text = DOC.read_text(encoding="utf-8")
    missing = [name for name in [*BRANCHES, *(v.id for v in VARIANTS)] if f"`{name}`" not in text]
    assert not missing, missing
