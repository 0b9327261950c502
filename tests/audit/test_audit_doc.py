"""docs/audit.md and the README show real outputs: each `$ grpo-check audit …` block is what the command prints
now."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location("audit_doc", ROOT / "scripts" / "audit_doc.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_pages_show_what_the_commands_print():
    script = _script()
    for page, least in zip(script.PAGES, (3, 1), strict=True):
        text = page.read_text(encoding="utf-8")
        assert len(script.BLOCK.findall(text)) >= least, page
        assert script.regenerate(text) == text, f"{page} is out of date: run python scripts/audit_doc.py"


def test_a_changed_output_is_detected():
    script = _script()
    text = (
        script.PAGES[0]
        .read_text(encoding="utf-8")
        .replace("4 error(s), 9 warning(s)", "3 error(s), 9 warning(s)")
    )
    assert script.regenerate(text) != text
