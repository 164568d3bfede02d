"""What the CLI tests share: invoking the command and reading its output."""

from __future__ import annotations

from click.testing import Result
from typer.testing import CliRunner

from lmshield.cli.main import app


def invoke(*args: object, **kwargs: object) -> Result:
    """Run ``lmshield`` with these arguments (each turned into a string)."""
    return CliRunner().invoke(app, [str(a) for a in args], **kwargs)


def said(result: Result) -> str:
    """The output as one line of words (a usage error or help comes in a box that wraps long lines)."""
    return " ".join(result.output.replace("│", " ").split())
