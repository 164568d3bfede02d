"""Entry point of the ``lmshield`` command."""

from __future__ import annotations

import signal
from types import FrameType

import typer

from lmshield.cli._common import quiet_libraries
from lmshield.cli.attack import app as attack_app
from lmshield.cli.guard import guard_app, predict_command
from lmshield.cli.poison import app as poison_app
from lmshield.cli.psim import app as psim_app
from lmshield.cli.scan import scan_command
from lmshield.cli.tune import tune_command
from lmshield.cli.zoo import app as zoo_app
from lmshield.errors import EXIT_ERROR

app = typer.Typer(
    name="lmshield",
    help="Find and neutralise backdoors in language models adapted with prompt tuning and PEFT.",
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("scan")(scan_command)
app.command("tune")(tune_command)
app.command("predict")(predict_command)
app.add_typer(guard_app, name="guard")
app.add_typer(attack_app, name="attack")
app.add_typer(zoo_app, name="zoo")
app.add_typer(poison_app, name="poison")
app.add_typer(psim_app, name="psim")


def _version(value: bool) -> None:
    if value:
        from lmshield import __version__

        typer.echo(f"lmshield {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    """Find and neutralise backdoors in language models adapted with prompt tuning and PEFT."""


def interrupt_on_sigterm() -> None:
    """Let SIGTERM (``kill``, a cluster cancelling or pre-empting a job) stop a command as Ctrl-C does: it then
    releases its output folder's lock (:mod:`lmshield.locks`) and says how to resume, where it died on the spot."""
    signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main() -> None:
    """Run the CLI; a usage error (a bad or missing option) is one line on stderr and exit code 2, like every
    other error, instead of click's usage box."""
    quiet_libraries()
    interrupt_on_sigterm()
    try:
        code = app(standalone_mode=False)
    except typer.TyperException as exc:  # click's usage errors, the help of a group called without a command
        message, ctx = exc.format_message(), getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError":  # a group called alone: its message is the help
            if message.strip():
                typer.echo(message, err=True)
        else:
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            typer.echo(f"error: {' '.join(message.split())}{hint}", err=True)
        raise SystemExit(getattr(exc, "exit_code", EXIT_ERROR)) from None
    except typer.Abort:  # Ctrl-C at a prompt
        raise SystemExit(130) from None
    raise SystemExit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
