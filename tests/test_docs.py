"""The README and the docs site cannot drift from the code.

- the README stays a landing page (at most ~300 lines) and the site's home page is generated from it;
- the command-line options table is generated from the typer app, and one option name means one thing;
- every ``grpo-check`` command shown in the README or the docs names a real subcommand and real options;
- the example files shown in the docs are the files in the repository;
- ``mkdocs build --strict`` passes (and fails on a broken link): skipped where mkdocs is not installed,
  except in CI (``CI=true``), where it must run.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _regen():
    spec = importlib.util.spec_from_file_location("regen_docs", ROOT / "scripts" / "regen_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pages() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def test_readme_is_a_landing_page() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 300
    for link in re.findall(r"\]\(((?:docs|reference|examples)/[^)#]+)", readme):
        assert (ROOT / link).exists(), link


def test_site_home_page_is_generated_from_the_readme() -> None:
    expected = _regen().index_from_readme((ROOT / "README.md").read_text(encoding="utf-8"))
    assert (DOCS / "index.md").read_text(encoding="utf-8") == expected, "run: python scripts/regen_docs.py"


def test_cli_options_table_is_generated_from_the_app() -> None:
    from grpo_check.cli.options_table import render_markdown, vocabulary_problems

    assert (DOCS / "cli.md").read_text(encoding="utf-8") == render_markdown(), (
        "run: python scripts/regen_docs.py"
    )
    assert vocabulary_problems() == []


def test_vocabulary_check_fires_on_a_short_option_with_two_meanings(monkeypatch) -> None:
    from grpo_check.cli import options_table

    rows = options_table.option_rows()
    clash = options_table.OptionRow("demo", ("--out-folder", "-f"), "value", "", "")
    monkeypatch.setattr(options_table, "option_rows", lambda: [*rows, clash])
    assert options_table.vocabulary_problems() == ["-f is --format in `audit` but --out-folder in `demo`"]


def _shown_commands() -> list[tuple[str, str]]:
    """Every ``grpo-check ...`` line in a bash/console/text code block of the README or a docs page."""
    commands = []
    for page in _pages():
        for block in re.findall(r"```[a-z]*\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S):
            for line in block.splitlines():
                line = line.strip().removeprefix("$ ").removeprefix("time ")
                # not an output line such as "grpo-check demo: 4 configuration(s)" or a repro's title
                first = line.split()[1] if len(line.split()) > 1 else ""
                if line.startswith("grpo-check ") and not first.endswith(":") and first != "repro":
                    commands.append((page.name, line))
    return commands


def _option_names(command) -> dict[str, bool]:
    """Every option name (visible or hidden) of a click command → whether it is a flag."""
    names = {}
    for param in command.params:
        if param.param_type_name == "option":
            for name in (*param.opts, *param.secondary_opts):
                names[name] = bool(param.is_flag)
    names["--help"] = True
    return names


def test_every_command_shown_in_the_docs_exists() -> None:
    import typer

    from grpo_check.cli import app

    group = typer.main.get_command(app)
    shown = _shown_commands()
    assert len(shown) > 30
    problems = []
    for page, line in shown:
        code = line.split("  #")[0].split(" | ")[0].split(" && ")[0].split(" > ")[0].split(" 2>")[0]
        words = shlex.split(code.replace("\\", ""))[1:]
        if not words or words[0] in ("--help", "--version"):
            continue
        command = group.commands.get(words[0])
        if command is None:
            problems.append(f"{page}: {line!r}: no subcommand {words[0]!r}")
            continue
        options = _option_names(command)
        for word in words[1:]:
            name = word.split("=")[0]
            if word.startswith("-") and not re.fullmatch(r"-\d.*", word) and name not in options:
                problems.append(f"{page}: {line!r}: `grpo-check {words[0]}` has no option {name}")
    assert problems == []


def _without_docstring(source: str) -> str:
    tree = ast.parse(source)
    first = tree.body[0]
    if (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
    ):
        source = "\n".join(source.splitlines()[first.end_lineno :])
    return source.strip()


@pytest.mark.parametrize(
    ("page", "example"),
    [("compare.md", "examples/my_loop.py"), ("ci.md", "tests/examples/test_ci_example.py")],
)
def test_example_files_are_the_code_shown(page: str, example: str) -> None:
    blocks = re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(encoding="utf-8"), flags=re.S)
    code = _without_docstring((ROOT / example).read_text(encoding="utf-8"))
    shown = [b.strip().removeprefix(f"# {example}").strip() for b in blocks]
    assert code in shown, f"the code block of docs/{page} differs from {example}"


def _mkdocs() -> list[str]:
    if (
        importlib.util.find_spec("mkdocs") is not None
        and importlib.util.find_spec("mkdocstrings") is not None
    ):
        return [sys.executable, "-m", "mkdocs"]
    if IN_CI:
        pytest.fail("CI must build the docs: pip install -e '.[docs]'")
    pytest.skip("mkdocs is not installed (pip install -e '.[docs]')")


def _build(root: Path, site: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [*_mkdocs(), "build", "--strict", "-f", str(root / "mkdocs.yml"), "-d", str(site)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.mark.slow
def test_docs_site_builds_strictly_and_fails_on_a_broken_link(tmp_path: Path) -> None:
    run = _build(ROOT, tmp_path / "site")
    assert run.returncode == 0, run.stderr[-4000:]
    assert (tmp_path / "site" / "index.html").is_file()
    api = (tmp_path / "site" / "api" / "index.html").read_text(encoding="utf-8")
    for name in ("GRPOSpec", "Recorder", "attach", "assert_matches_reference", "compare"):
        assert name in api, name

    copy = tmp_path / "copy"
    shutil.copytree(DOCS, copy / "docs", symlinks=True, ignore=shutil.ignore_patterns("spec"))
    shutil.copytree(ROOT / "reference", copy / "reference")
    (copy / "docs" / "spec").symlink_to("../reference")
    shutil.copy(ROOT / "mkdocs.yml", copy / "mkdocs.yml")
    page = copy / "docs" / "reports.md"
    page.write_text(
        page.read_text(encoding="utf-8") + "\nSee [nothing](no-such-page.md).\n", encoding="utf-8"
    )
    broken = _build(copy, tmp_path / "broken-site")
    assert broken.returncode != 0 and "no-such-page.md" in broken.stderr + broken.stdout


@pytest.mark.parametrize("page", ["README.md", "docs/compare.md"])
def test_the_walkthrough_output_is_what_grpo_check_prints(page: str, tmp_path: Path, monkeypatch) -> None:
    """The output shown for ``python examples/my_loop.py && grpo-check compare traces/my-loop``, line for line
    where it is not elided by "..." (the run is deterministic)."""
    import runpy

    from typer.testing import CliRunner

    from grpo_check.cli import app

    text = (ROOT / page).read_text(encoding="utf-8")
    block = re.search(
        r"```console\n\$ python examples/my_loop.py\n\$ grpo-check compare traces/my-loop\n(.*?)\n(?:\$ |```)",
        text,
        flags=re.S,
    )
    assert block is not None
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(ROOT / "examples" / "my_loop.py"), run_name="__main__")
    run = CliRunner().invoke(app, ["compare", "traces/my-loop"])
    assert run.exit_code == 1, run.output
    position = 0
    for chunk in block.group(1).split("\n...\n"):  # "..." elides lines; the rest is shown as printed
        chunk = chunk.removesuffix("\n...")
        found = run.stdout.find(chunk, position)
        assert found >= 0, f"not in grpo-check's output (in this order):\n{chunk}\n\noutput:\n{run.stdout}"
        position = found + len(chunk)


@pytest.mark.slow
@pytest.mark.parametrize("page", ["audit-rules.md", "reference.md"])
def test_console_examples_are_what_grpo_check_prints(page: str) -> None:
    """The audit and selfcheck examples, rerun (``python scripts/regen_docs.py`` rewrites them)."""
    if shutil.which("grpo-check") is None:
        pytest.skip("the grpo-check command is not installed")
    text = (DOCS / page).read_text(encoding="utf-8")
    assert _regen().console_blocks_now(text) == text, "run: python scripts/regen_docs.py"
