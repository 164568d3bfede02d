"""What every command shares: error handling, exit codes and the ``--device`` option."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from functools import wraps
from typing import Annotated, Any, TypeVar

import typer

from lmshield.errors import LmshieldError

F = TypeVar("F", bound=Callable[..., Any])

Device = Annotated[
    str, typer.Option(help="auto (LMSHIELD_DEVICE when set, else CUDA when present), cpu, cuda or cuda:N.")
]

TextField = Annotated[
    str | None, typer.Option(help="Text field of the records (default: the first of text, sentence, content, review).")
]


def quiet_libraries() -> None:
    """Keep transformers' load-time chatter out of the user's terminal."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.basicConfig(level=logging.INFO, format="%(message)s")


def friendly_errors(command: F) -> F:
    """Turn an :class:`LmshieldError` into one line on stderr (lines joined) and its exit code; no traceback."""

    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except LmshieldError as exc:
            message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
            typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            typer.secho("interrupted: rerun the same command to resume", err=True)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]
