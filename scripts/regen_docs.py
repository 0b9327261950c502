"""Regenerate what the docs show from the code, so that the docs cannot drift:

- ``docs/index.md``, the site's home page, from ``README.md`` (links into ``docs/`` made relative to it, links
  to the specification in ``reference/`` pointed at ``spec/``, its place in the site; links to other files
  outside the site become plain code spans);
- ``docs/cli.md``, the table of every subcommand's options, from the typer app;
- the output of the ``grpo-check audit`` and ``grpo-check selfcheck`` examples in ``docs/audit-rules.md`` and
  ``docs/reference.md`` (each ``console`` block whose commands are all ``grpo-check`` ones and that shows
  the whole output, run in a scratch folder holding ``examples/``; ``$ echo $?`` shows the exit code of the command before it);
- with ``--slow``: the same for the ``grpo-check demo`` and ``compare --trainer`` examples of ``docs/demo.md``
  and ``docs/trl.md`` (they train TRL's real trainer);
- with ``--reports``: ``reports/my-loop/`` (the committed example report), by running ``examples/my_loop.py``
  and ``grpo-check compare traces/my-loop`` as the README shows.

``tests/test_docs.py`` fails when a page differs from what this script writes.

Run: python scripts/regen_docs.py [--slow] [--reports]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
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


CONSOLE_PAGES = ("audit-rules.md", "reference.md")
SLOW_CONSOLE_PAGES = ("demo.md", "trl.md")  # they train TRL (minutes; their timings differ run to run)
_CONSOLE = re.compile(r"```console\n(.*?)```", flags=re.S)


def _runnable(commands: list[str]) -> bool:
    return bool(commands) and all(c.startswith("grpo-check ") or c == "echo $?" for c in commands)


def _run_console_block(block: str) -> str:
    """The block with each command's output as it prints now (stdout; ``echo $?``: the last exit code)."""
    commands = [line[2:] for line in block.splitlines() if line.startswith("$ ")]
    if not _runnable(commands) or "..." in block.splitlines():  # "...": an excerpt, kept as written
        return block
    out: list[str] = []
    code = 0
    with tempfile.TemporaryDirectory() as scratch:  # files a command writes (-o audit.sarif) land here
        (Path(scratch) / "examples").symlink_to(ROOT / "examples")
        for command in commands:
            out.append(f"$ {command}")
            if command == "echo $?":
                out.append(str(code))
                continue
            run = subprocess.run(
                ["bash", "-c", command], cwd=scratch, capture_output=True, text=True, check=False
            )
            code = run.returncode
            out += run.stdout.rstrip("\n").splitlines()
    return "\n".join(out) + "\n"


def console_blocks_now(text: str) -> str:
    """``text`` with every runnable console block rerun."""
    return _CONSOLE.sub(lambda m: f"```console\n{_run_console_block(m.group(1))}```", text)


def write_console_blocks(pages: tuple[str, ...] = CONSOLE_PAGES) -> list[Path]:
    paths = []
    for name in pages:
        path = ROOT / "docs" / name
        path.write_text(console_blocks_now(path.read_text(encoding="utf-8")), encoding="utf-8")
        paths.append(path)
    return paths


def write_example_report() -> None:
    """``python examples/my_loop.py && grpo-check compare traces/my-loop`` (exit 1: it finds the bug)."""
    subprocess.run([sys.executable, "examples/my_loop.py"], cwd=ROOT, check=True)
    run = subprocess.run(["grpo-check", "compare", "traces/my-loop"], cwd=ROOT, check=False)
    if run.returncode != 1:
        raise SystemExit(f"grpo-check compare traces/my-loop exited {run.returncode}, expected 1 (findings)")


def main() -> None:
    parser = argparse.ArgumentParser(description="Regenerate what the docs show from the code.")
    parser.add_argument("--reports", action="store_true", help="also regenerate reports/my-loop/")
    parser.add_argument(
        "--slow",
        action="store_true",
        help=f"also rerun the examples of {', '.join(SLOW_CONSOLE_PAGES)} (TRL training)",
    )
    args = parser.parse_args()
    print(write_index().relative_to(ROOT))
    print(write_cli_table().relative_to(ROOT))
    for path in write_console_blocks(CONSOLE_PAGES + (SLOW_CONSOLE_PAGES if args.slow else ())):
        print(path.relative_to(ROOT))
    if args.reports:
        write_example_report()
        print("reports/my-loop/")


if __name__ == "__main__":
    main()
