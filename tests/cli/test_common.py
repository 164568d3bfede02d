"""What every command shares: an lmshield error is one line on stderr with its exit code."""

from __future__ import annotations

import pytest
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


def test_an_interrupted_command_that_keeps_no_progress_says_a_rerun_starts_over(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    """predict, psim score, guard eval... said 'rerun the same command to resume', but they keep no progress."""
    import lmshield.cli.guard
    from lmshield.cli.main import app

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(lmshield.cli.guard, "_load_guard", interrupted)
    monkeypatch.setattr("lmshield.tuning.TunedClassifier.from_pretrained", interrupted)
    texts = tmp_path / "texts.txt"
    texts.write_text("a text\n")
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "clf"), str(texts)])
    assert result.exit_code == 130, result.output
    assert "keeps no progress; rerun it to start over" in result.output and "resume" not in result.output


def _failing_app(error: BaseException | None, code: int = 0) -> typer.Typer:
    app = typer.Typer()

    @app.command()
    @friendly_errors
    def failing() -> None:
        if error is not None:
            raise error
        raise typer.Exit(code)

    return app


def test_an_unforeseen_error_is_one_line_and_exit_two(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LMSHIELD_DEBUG", raising=False)
    result = CliRunner().invoke(_failing_app(ValueError("dropout probability\nhas to be between 0 and 1")), [])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == EXIT_ERROR and len(lines) == 1, result.output
    assert lines[0].startswith("error: unexpected ValueError: dropout probability has to be between 0 and 1")
    assert "LMSHIELD_DEBUG=1" in lines[0]
    monkeypatch.setenv("LMSHIELD_DEBUG", "1")  # the traceback, for a bug report
    debug = CliRunner().invoke(_failing_app(ValueError("boom")), [])
    assert isinstance(debug.exception, ValueError)


def test_a_command_s_own_exit_code_passes_through() -> None:
    assert CliRunner().invoke(_failing_app(None, code=3), []).exit_code == 3
