"""The options of every ``grpo-check`` subcommand, read from the typer app: the table in ``docs/cli.md`` and the
check that one option name means one thing across subcommands.

>>> problems = vocabulary_problems()
>>> problems
[]
"""

from __future__ import annotations

import dataclasses
from typing import Any

VOCABULARY: dict[str, str] = {
    "--output": "where the command writes: the report folder for commands that write a report set (`compare`, "
    "`check`, `demo`), the file for commands that write one document (`report`, `zoo`, `bench`, `audit`)",
    "--format": "what is printed (or written to `--output` where that is one file)",
    "--strict": "warnings count as findings: exit 1 on a warning too",
    "--only": "restrict the run to the named items (repeatable)",
    "--list": "list what the command would run, and exit",
    "--trainer": "a `path.py:factory` returning your trainer before `train()`",
    "--steps": "optimizer steps to train",
}
"""Options shared by several subcommands, each with the one meaning it has everywhere."""


@dataclasses.dataclass(frozen=True)
class OptionRow:
    command: str
    names: tuple[str, ...]  # long name first, then short ones; arguments: their metavar
    takes: str  # "flag", "value" or "argument"
    default: str
    help: str
    hidden_aliases: tuple[str, ...] = ()


def _command_group() -> Any:
    """The click group typer builds from the app (typer may vendor its own click: duck-typed here)."""
    import typer

    from grpo_check.cli import app

    return typer.main.get_command(app)


def _default(param: Any) -> str:
    value: Any = param.default
    if value is None or value == [] or value == () or callable(value):
        return ""
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def _is_option(param: Any) -> bool:
    return param.param_type_name == "option"


def option_rows() -> list[OptionRow]:
    """Every visible option and argument of every subcommand, in the order ``--help`` shows them. An option
    hidden from ``--help`` whose destination another option also writes is listed as that option's alias."""
    rows: list[OptionRow] = []
    group = _command_group()
    for name in sorted(group.commands):
        command = group.commands[name]
        hidden = {p.name: p for p in command.params if _is_option(p) and p.hidden}
        for param in command.params:
            if _is_option(param) and param.hidden:
                continue
            if not _is_option(param):
                rows.append(
                    OptionRow(
                        name,
                        ((param.metavar or param.name or "").upper(),),
                        "argument",
                        "",
                        (getattr(param, "help", "") or "").strip(),
                    )
                )
                continue
            longs = [o for o in param.opts if o.startswith("--")] + list(param.secondary_opts)
            shorts = [o for o in param.opts if not o.startswith("--")]
            aliases = tuple(o for p in hidden.values() if p.name == f"{param.name}_alias" for o in p.opts)
            rows.append(
                OptionRow(
                    name,
                    (*longs, *shorts),
                    "flag" if param.is_flag else "value",
                    _default(param),
                    (param.help or "").strip(),
                    aliases,
                )
            )
    return rows


def vocabulary_problems() -> list[str]:
    """Where one name means two things: a short option standing for different long options in two
    subcommands."""
    problems: list[str] = []
    short_to_long: dict[str, tuple[str, str]] = {}
    for row in option_rows():
        if row.takes == "argument":
            continue
        long_name = row.names[0]
        for short in (n for n in row.names if not n.startswith("--")):
            seen = short_to_long.setdefault(short, (long_name, row.command))
            if seen[0] != long_name:
                problems.append(f"{short} is {seen[0]} in `{seen[1]}` but {long_name} in `{row.command}`")
    return problems


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def render_markdown() -> str:
    """``docs/cli.md``: the shared vocabulary, then one table per subcommand."""
    rows = option_rows()
    lines = [
        "# Command-line options",
        "",
        "<!-- Generated from the typer app by `python scripts/regen_docs.py`; "
        "tests/test_docs.py fails when it is out of date. -->",
        "",
        "Every subcommand takes `--help` with examples. Exit codes everywhere: **0** clean, **1** findings, "
        "**2** usage or input error, **3** the trainer or its factory crashed (or was interrupted), "
        "**4** incomplete coverage.",
        "",
        "## One vocabulary",
        "",
        "An option name means the same thing in every subcommand that has it; a short form always stands for "
        "the same long one.",
        "",
        "| option | meaning | subcommands |",
        "|---|---|---|",
    ]
    for long_name, meaning in VOCABULARY.items():
        users = sorted({r.command for r in rows if r.names and r.names[0] == long_name})
        shorts = sorted({n for r in rows if r.names and r.names[0] == long_name for n in r.names[1:]})
        shown = ", ".join([*shorts, long_name]) if shorts else long_name
        lines.append(f"| `{shown}` | {meaning} | {', '.join(f'`{u}`' for u in users) or '-'} |")
    aliased = [(r.command, r.names[0], a) for r in rows for a in r.hidden_aliases]
    if aliased:
        lines += [
            "",
            "Older spellings still accepted (not shown in `--help`): "
            + "; ".join(f"`grpo-check {c} {a}` for `{n}`" for c, n, a in aliased)
            + ".",
        ]
    for command in sorted({r.command for r in rows}):
        lines += [
            "",
            f"## `grpo-check {command}`",
            "",
            "| option | takes | default | meaning |",
            "|---|---|---|---|",
        ]
        for row in (r for r in rows if r.command == command):
            names = ", ".join(f"`{n}`" for n in row.names)
            lines.append(
                f"| {names} | {row.takes} | {_cell(row.default) or '-'} | {_cell(row.help) or '-'} |"
            )
    return "\n".join(lines) + "\n"
