"""user_errors(): user mistakes become one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import errno

import pytest
import typer

from grpo_check.cli._common import EXIT_USAGE, user_errors
from grpo_check.findings import InputError


@pytest.mark.parametrize(
    "error",
    [
        InputError("bad field", source="trace/manifest.json", field="config"),
        FileNotFoundError(errno.ENOENT, "No such file or directory", "missing.json"),
        IsADirectoryError(errno.EISDIR, "Is a directory", "reports"),
        NotADirectoryError(errno.ENOTDIR, "Not a directory", "file.txt/out"),
        FileExistsError(errno.EEXIST, "File exists", "out"),
        PermissionError(errno.EACCES, "Permission denied", "/root/x"),
        OSError(errno.ENOSPC, "No space left on device", "reports/result.json"),
    ],
)
def test_user_mistakes_exit_2(error, capsys):
    with pytest.raises(typer.Exit) as exit_info, user_errors():
        raise error
    assert exit_info.value.exit_code == EXIT_USAGE
    assert capsys.readouterr().err.startswith("error: ")


def test_programming_errors_still_raise():
    with pytest.raises(ZeroDivisionError), user_errors():
        raise ZeroDivisionError("our bug, keep the traceback")


def test_exit_codes_keep_their_documented_numbers():
    from grpo_check.cli._common import ExitCode

    assert [int(code) for code in ExitCode] == [0, 1, 2, 3, 4, 130, 143]
    assert [code.name for code in ExitCode][:5] == ["OK", "FINDINGS", "USAGE", "CRASHED", "INCOMPLETE"]


def test_output_format_parse_accepts_the_allowed_and_exits_2_on_others(capsys):
    import typer

    from grpo_check.cli._common import OutputFormat

    allowed = (OutputFormat.TEXT, OutputFormat.JSON)
    assert OutputFormat.parse("json", allowed) is OutputFormat.JSON
    assert OutputFormat.parse("json", allowed) == "json"  # compares as the plain string
    with pytest.raises(typer.Exit) as caught:
        OutputFormat.parse("md", allowed)
    assert caught.value.exit_code == 2
    assert "--format must be text or json, got 'md'" in capsys.readouterr().err
