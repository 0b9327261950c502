"""Regenerate (or, with --check, verify) the command outputs shown in docs/audit.md and README.md.

Every ```text block in the page that starts with `$ grpo-check audit …` is the real output of that command, run
from the repository root with the installed TRL; this script reruns each and rewrites the block.

    python scripts/audit_doc.py           # rewrite the blocks
    python scripts/audit_doc.py --check   # exit 1 when a block differs from what the command prints now
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = (ROOT / "docs" / "audit.md", ROOT / "README.md")
BLOCK = re.compile(r"```text\n(\$ grpo-check audit [^\n]*\n)(.*?)```", re.DOTALL)


def run(command: str) -> str:
    """What `command` (a `$ grpo-check audit …` line, possibly several in one block) prints."""
    from typer.testing import CliRunner

    from grpo_check.cli import app

    args = shlex.split(command.removeprefix("$ ").strip())[1:]
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        result = CliRunner().invoke(app, args)
    finally:
        os.chdir(cwd)
    return result.output.rstrip("\n")


def render_block(first: str, body: str) -> str:
    commands = [first.rstrip("\n")] + [
        line for line in body.splitlines() if line.startswith("$ grpo-check audit ")
    ]
    parts = [f"{command}\n{run(command)}" for command in commands]
    return "```text\n" + "\n\n".join(parts) + "\n```"


def regenerate(text: str) -> str:
    return BLOCK.sub(lambda m: render_block(m.group(1), m.group(2)), text)


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(ROOT))
    stale = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        new = regenerate(text)
        if new == text:
            continue
        if "--check" in argv:
            stale.append(page.relative_to(ROOT))
        else:
            page.write_text(new, encoding="utf-8")
    if stale:
        names = " and ".join(str(name) for name in stale)
        print(f"{names} out of date: run python scripts/audit_doc.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
