"""What every command shares: an lmshield error is one line on stderr with its exit code."""

from __future__ import annotations

import typer
from typer.testing import CliRunner

from lmshield.cli._common import friendly_errors
from lmshield.errors import EXIT_ERROR, InputError


def test_a_message_of_several_lines_is_printed_as_one() -> None:
    app = typer.Typer()

    @app.command()
    @friendly_errors
    def broken() -> None:
        raise InputError("dataset x[train] cannot be loaded (ConnectionError:\n  offline\n)")

    result = CliRunner().invoke(app, [])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == EXIT_ERROR
    assert lines == ["error: dataset x[train] cannot be loaded (ConnectionError: offline )"]


def test_an_interrupted_command_exits_130_with_a_hint() -> None:
    app = typer.Typer()

    @app.command()
    @friendly_errors
    def interrupted() -> None:
        raise KeyboardInterrupt

    result = CliRunner().invoke(app, [])
    assert result.exit_code == 130 and "rerun the same command to resume" in result.output
