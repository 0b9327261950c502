"""Regenerate what the docs show from the code, so that the docs cannot drift:

- ``docs/index.md``, the site's home page, from ``README.md`` (links into ``docs/`` made relative to it, links
  to the specification in ``reference/`` pointed at ``spec/``, its place in the site; links to other files
  outside the site become plain code spans);
- ``docs/cli.md``, the table of every subcommand's options, from the typer app;
- with ``--reports``: ``reports/my-loop/`` (the committed example report), by running ``examples/my_loop.py``
  and ``grpo-check compare traces/my-loop`` as the README shows.

``tests/test_docs.py`` fails when ``docs/index.md`` or ``docs/cli.md`` differs from what this script writes.

Run: python scripts/regen_docs.py [--reports]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")


def index_from_readme(readme: str) -> str:
    """The README as the site's home page."""

    def relink(match: re.Match[str]) -> str:
        text, target = match.group(1), match.group(2)
        if target.startswith(("http://", "https://", "#")):
            return match.group(0)
        if target.startswith("docs/"):
            return f"[{text}]({target[len('docs/') :]})"
        if target.startswith("reference/") and target.endswith(".md"):  # served as docs/spec/
            return f"[{text}](spec/{target[len('reference/') :]})"
        return text if text.startswith("`") else f"`{text}`"  # a file outside the site: name it

    body = _LINK.sub(relink, readme)
    note = "<!-- Generated from README.md by `python scripts/regen_docs.py`; edit the README. -->\n\n"
    return note + body


def write_index() -> Path:
    path = ROOT / "docs" / "index.md"
    path.write_text(index_from_readme((ROOT / "README.md").read_text(encoding="utf-8")), encoding="utf-8")
    return path


def write_cli_table() -> Path:
    sys.path.insert(0, str(ROOT))
    from grpo_check.cli.options_table import render_markdown

    path = ROOT / "docs" / "cli.md"
    path.write_text(render_markdown(), encoding="utf-8")
    return path


def write_example_report() -> None:
    """``python examples/my_loop.py && grpo-check compare traces/my-loop`` (exit 1: it finds the bug)."""
    subprocess.run([sys.executable, "examples/my_loop.py"], cwd=ROOT, check=True)
    run = subprocess.run(["grpo-check", "compare", "traces/my-loop"], cwd=ROOT, check=False)
    if run.returncode != 1:
        raise SystemExit(f"grpo-check compare traces/my-loop exited {run.returncode}, expected 1 (findings)")


def main() -> None:
    parser = argparse.ArgumentParser(description="Regenerate what the docs show from the code.")
    parser.add_argument("--reports", action="store_true", help="also regenerate reports/my-loop/")
    args = parser.parse_args()
    print(write_index().relative_to(ROOT))
    print(write_cli_table().relative_to(ROOT))
    if args.reports:
        write_example_report()
        print("reports/my-loop/")


if __name__ == "__main__":
    main()
