"""Standard JSON for lmshield's reports: a metric that does not apply (NaN) or an unbounded threshold (inf)
is written as ``null``, since JSON has no NaN or Infinity and strict readers (``jq``, ``JSON.parse``) refuse
Python's ``NaN`` / ``Infinity`` extensions."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from lmshield.errors import InputError
from lmshield.progress import write_own_marker, write_text


def json_ready(value: Any) -> Any:
    """``value`` with every non-finite float, at any depth of dicts, lists and tuples, replaced by ``None``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(item) for item in value]
    return value


def dumps(payload: Any, **kwargs: Any) -> str:
    """:func:`json.dumps` of :func:`json_ready` ``(payload)``; never emits ``NaN`` or ``Infinity``."""
    return json.dumps(json_ready(payload), allow_nan=False, **kwargs)


def nan_if_none(value: float | None) -> float:
    """Inverse of :func:`json_ready` for a metric: ``None`` (a metric that did not apply) reads back as NaN."""
    return math.nan if value is None else value


def check_format_version(data: dict[str, Any], supported: int, where: object) -> None:
    """Refuse a file written in a newer format than this lmshield reads (a missing version reads as 1)."""
    version = data.get("format_version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise InputError(f"{where}: format_version must be a whole number from 1, got {version!r}")
    if version > supported:
        raise InputError(
            f"{where}: format version {version}, written by a newer lmshield (this one reads up to {supported}); "
            "upgrade lmshield"
        )


def write_json(path: Path, payload: Any) -> None:
    """Write ``payload`` as indented JSON, whole: a reader sees the old file or the new one, never half."""
    write_text(path, json.dumps(payload, indent=2))


def write_marker_json(path: Path, payload: Any) -> None:
    """Write an artefact's top JSON (``tuning.json``, ``psim.json``, ``scan.json``) last and whole.

    Every loader reads that file first, so a save that starts by removing it (:func:`unmark`) and ends here
    leaves, when interrupted, a folder no loader takes for a finished artefact, never one mixing old and new
    files."""
    write_json(path, payload)
    unfinished(path).unlink(missing_ok=True)


def unmark(path: Path) -> None:
    """Remove an artefact's top JSON before its other files are rewritten (see :func:`write_marker_json`),
    leaving :func:`unfinished` in its place: a rerun may write over its own interrupted save."""
    write_own_marker(unfinished(path), f"lmshield is writing {path.name} here")
    path.unlink(missing_ok=True)


def unfinished(path: Path) -> Path:
    """The hidden file that marks an artefact whose top JSON ``path`` is being written (see :func:`unmark`)."""
    return path.with_name(f".{path.name}.unfinished")
