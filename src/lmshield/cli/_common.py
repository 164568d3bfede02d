"""What every command shares: error handling, exit codes and the ``--device`` option."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import click
import typer

from lmshield.errors import EXIT_ERROR, InputError, LmshieldError
from lmshield.jsonio import unfinished
from lmshield.progress import is_own_marker, refuse_finished, refuse_foreign_folder

F = TypeVar("F", bound=Callable[..., Any])

Device = Annotated[
    str, typer.Option(help="auto (LMSHIELD_DEVICE when set, else CUDA when present), cpu, cuda or cuda:N.")
]

TextField = Annotated[
    str | None,
    typer.Option(
        "--field",
        "--text-field",
        help="Text field of the records (default: the first of text, sentence, content, review).",
    ),
]

LabelField = Annotated[str, typer.Option(help="Label field of the records.")]

# carrier text for the commands that take it (scan, attack); TextSource.from_options refuses the ones that do not fit
CarrierDataset = Annotated[str | None, typer.Option("--dataset", help="Carrier text from a Hugging Face dataset id.")]
CarrierSplit = Annotated[str | None, typer.Option("--split", help="Dataset split (default train).")]
CarrierColumn = Annotated[str | None, typer.Option("--column", help="Dataset text column.")]
CarrierGenerator = Annotated[
    str | None, typer.Option("--generator", help="Data-free carrier generator: grammar (default) or vocab.")
]


Base = Annotated[
    Path | None,
    typer.Option(
        help="Where the base model now lives, if it moved since tuning (its weights must match the recorded ones)."
    ),
]


def _check_writable(path: Path, want_dir: bool) -> None:
    """Refuse, before any work, an output path that cannot be written: something in the way, or no permission."""
    if path.exists():
        if want_dir and not path.is_dir():
            raise typer.BadParameter(f"{path} is a file, not a folder")
        if not want_dir and path.is_dir():
            raise typer.BadParameter(f"{path} is a folder, not a file")
        place = path if path.is_dir() else path.parent
    else:
        place = path.absolute().parent
        while not place.exists():
            place = place.parent
        if not place.is_dir():
            raise typer.BadParameter(f"{place} is a file, so {path} cannot be created")
    if not os.access(place, os.W_OK):
        raise typer.BadParameter(f"{place} is not writable")


def output_dir(value: Path | None) -> Path | None:
    """Option callback: a folder lmshield may create or write into."""
    if value is not None:
        _check_writable(value, want_dir=True)
    return value


def output_file(value: Path | None) -> Path | None:
    """Option callback: a file lmshield may create or replace."""
    if value is not None:
        _check_writable(value, want_dir=False)
    return value


def refuse_clobbering(outputs: dict[str, Path | None], inputs: tuple[Path | None, ...]) -> None:
    """Refuse (before any work) an output file that is one of the command's inputs or another output, or a file
    inside an input folder (a classifier's, a scan's): writing there would change or destroy what the run reads."""
    sources = [Path(path).resolve() for path in inputs if path is not None]
    taken: dict[Path, str] = {}
    for option, path in outputs.items():
        if path is None:
            continue
        target = path.resolve()
        if target in sources or target in taken:
            other = f"what {taken[target]} writes" if target in taken else "one of this command's inputs"
            raise InputError(f"{option} {path} is {other}; choose another file")
        inside = next((source for source in sources if source.is_dir() and source in target.parents), None)
        if inside is not None:
            raise InputError(f"{option} {path} lies inside the input {inside}; write outside it")
        taken[target] = option


AnyScan = Annotated[
    bool,
    typer.Option(help="Accept a scan of other weights than the classifier's base encoder (a re-saved copy, say)."),
]

Quiet = Annotated[bool, typer.Option(help="No progress bars.")]

Overwrite = Annotated[bool, typer.Option(help="Replace what a finished run left in --out.")]

Fresh = Annotated[bool, typer.Option(help="Discard the progress an interrupted run left in --out.")]

AllowPickle = Annotated[
    bool, typer.Option(help="Load pickle weights (weights_only=True); refused by default: pickle can run code.")
]


ARTEFACTS = {  # the file at a folder's top that says what the folder holds
    "config.json": "model",
    "tuning.json": "tuned classifier",
    "psim.json": "fitted PSIM",
    "scan.json": "scan result",
    "backdoor.json": "backdoor manifest",
}


def refuse_foreign(out: Path, marker: str, what: str, ours: tuple[str, ...]) -> None:
    """Stop before any work when ``out`` holds another kind of artefact than a ``what`` (whose top file is
    ``marker``: a model, a scan, ...), or files none of which is one of ``ours`` (the command's result or
    progress), which the run would write over."""
    other = next((name for file, name in ARTEFACTS.items() if file != marker and (out / file).is_file()), None)
    if other is not None:
        raise InputError(f"{out} holds a {other}, not a {what}; choose another --out")
    own = unfinished(out / marker)  # its own interrupted save too, if this user's lmshield marked it
    refuse_foreign_folder(out, what, (*ours, *((own.name,) if is_own_marker(own) else ())))


def refuse_to_replace(out: Path, marker: str, what: str, overwrite: bool, resumable: tuple[str, ...] = ()) -> None:
    """:func:`refuse_foreign`, then :func:`lmshield.progress.refuse_finished`."""
    refuse_foreign(out, marker, what, (marker, *resumable))
    refuse_finished(out, marker, what, overwrite)


@contextmanager
def removed_if_left_empty(out: Path) -> Iterator[Path]:
    """``out``, removed again when the command fails before writing anything into the folder it created."""
    existed = out.exists()
    try:
        yield out
    except BaseException:
        if not existed and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise


def quiet_libraries() -> None:
    """Keep transformers' load-time chatter out of the user's terminal (through its environment variables, which
    transformers reads on import, so that ``--help`` does not import it; a user's own settings win)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logging.basicConfig(level=logging.INFO, format="%(message)s")


DEBUG_ENV = "LMSHIELD_DEBUG"  # set to 1: unexpected errors keep their traceback


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def friendly_errors(command: F, resumes: bool = True) -> F:
    """Turn an :class:`LmshieldError` into one line on stderr (lines joined) and its exit code, an ``OSError`` into
    one line and exit code 2, and any other exception (a file lmshield did not foresee, or a bug) into one line
    and exit code 2 as well, with its traceback only when ``LMSHIELD_DEBUG=1``. An interrupt says whether a rerun
    resumes (``resumes``) or starts over."""
    after_interrupt = (
        "interrupted: rerun the same command to resume"
        if resumes
        else "interrupted: this command keeps no progress; rerun it to start over"
    )

    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort, click.exceptions.ClickException):
            raise
        except LmshieldError as exc:
            typer.secho(f"error: {_one_line(str(exc))}", fg=typer.colors.RED, err=True)
            raise typer.Exit(exc.exit_code) from None
        except OSError as exc:  # an output path the system refuses: a file in the way, no permission, a full disk
            typer.secho(f"error: {_one_line(str(exc))}", fg=typer.colors.RED, err=True)
            raise typer.Exit(EXIT_ERROR) from None
        except KeyboardInterrupt:
            typer.secho(after_interrupt, err=True)
            raise typer.Exit(130) from None
        except Exception as exc:
            if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
                raise
            message = _one_line(f"{type(exc).__name__}: {exc}")
            typer.secho(
                f"error: unexpected {message} (rerun with {DEBUG_ENV}=1 for the traceback, and please report it)",
                fg=typer.colors.RED,
                err=True,
            )
            raise typer.Exit(EXIT_ERROR) from None

    return wrapper  # type: ignore[return-value]


def starts_over(command: F) -> F:
    """:func:`friendly_errors` for a command that keeps no progress: an interrupted run is rerun from the start."""
    return friendly_errors(command, resumes=False)
