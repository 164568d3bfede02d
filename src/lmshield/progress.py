"""Resumable jobs: progress files checked against an identity and written atomically.

A long job (a scan's seeds, a tuning run's epochs, a PSIM evaluation's strategies) keeps what it finished beside
its output, together with an *identity*: everything its result depends on (model, data, settings) and the
lmshield version. A rerun with the same identity resumes; another identity, or a file that cannot be read, is
refused with a one-line error that names ``--fresh``, which discards the old progress.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lmshield import __version__
from lmshield.errors import InputError

PROGRESS_JSON = "progress.json"  # the file name every resumable job keeps its progress under
CHECKPOINT_DIR = "checkpoint"  # where a training run (tune, poison) keeps its progress, inside its output folder
FRESH_HINT = "use another output folder or pass --fresh to discard it"


def refuse_foreign_folder(out: Path, what: str, ours: tuple[str, ...]) -> None:
    """Refuse (before any work) an output folder with files in it that hold none of ``ours`` (paths relative to
    ``out``: the job's result or progress): the job would write over a user's files."""
    if out.is_dir() and any(out.iterdir()) and not any((out / name).is_file() for name in ours):
        raise InputError(f"{out} is not empty and holds no {what}: its files could be written over; choose a new --out")


def stamp(identity: dict[str, Any]) -> dict[str, Any]:
    """``identity`` with the lmshield version, in the form it takes after a JSON round trip (tuples as lists)."""
    return json.loads(json.dumps({**identity, "lmshield": __version__}))


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Write through ``write(temporary)`` and move the result over ``path``: a reader never sees half a file."""
    temporary = path.with_name(path.name + ".tmp")
    write(temporary)
    os.replace(temporary, path)


def write_json(path: Path, payload: Any) -> None:
    """Atomically write ``payload`` as JSON to ``path`` (its folder is created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda p: p.write_text(json.dumps(payload), encoding="utf-8"))


def read_progress(path: Path, identity: dict[str, Any], job: str) -> dict[str, Any]:
    """The progress saved at ``path``, whose identity must equal ``identity`` (see :func:`stamp`).

    ``job`` names the kind of work in the error message ("a scan", "a training run", ...).
    """
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: unreadable progress ({exc}); {FRESH_HINT}") from exc
    if not isinstance(saved, dict) or saved.get("identity") != identity:
        raise InputError(
            f"{path.parent} holds progress of {job} with another model, data, settings or lmshield version; "
            + FRESH_HINT
        )
    return saved
