"""Resumable jobs: progress files checked against an identity and written atomically.

A long job (a scan's seeds, a tuning run's epochs, a PSIM evaluation's strategies) keeps what it finished beside
its output, together with an *identity*: everything its result depends on (model, data, settings) and the
lmshield version. A rerun with the same identity resumes; another identity, or a file that cannot be read, is
refused with a one-line error that names ``--fresh``, which discards the old progress.

Progress is input from disk like any other, and a model repository could ship some beside the model at the
place a scan writes to by default. So every progress file is sealed: an HMAC-SHA256, under a key kept in the
user's home (``~/.config/lmshield/progress.key``, made on first use; ``LMSHIELD_KEY_FILE`` names another file),
over the JSON and the sha256 of each tensor file it names. Progress this user's lmshield did not write is refused
(``--fresh`` starts over), so a job can only resume from what it wrote itself.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lmshield import __version__
from lmshield.errors import InputError

PROGRESS_JSON = "progress.json"  # the file name every resumable job keeps its progress under
CHECKPOINT_DIR = "checkpoint"  # where a training run (tune, poison) keeps its progress, inside its output folder
FRESH_HINT = "use another output folder or pass --fresh to discard it"
KEY_FILE_ENV = "LMSHIELD_KEY_FILE"
SEAL = "seal"
SEALED_FILES = "sealed_files"


def refuse_foreign_folder(out: Path, what: str, ours: tuple[str, ...], option: str = "--out") -> None:
    """Refuse (before any work) an output folder with files in it that hold none of ``ours`` (paths relative to
    ``out``, files or folders: the job's result or progress): the job would write over a user's files.

    ``option`` is the command-line option that names the folder, which the message asks the user to change."""
    visible = out.is_dir() and any(not entry.name.startswith(".") for entry in out.iterdir())  # not .gitkeep
    if visible and not any((out / name).exists() for name in ours):
        raise InputError(
            f"{out} is not empty and holds no {what}: its files could be written over; choose a new {option}"
        )
    refuse_links(out, option)


def refuse_links(out: Path, option: str = "--out") -> None:
    """Refuse an output folder holding a symbolic link at any depth: lmshield never makes one, and a folder
    shipped with one (a ``report.md`` or an ``id-0003`` pointing at the user's files) would have a job write
    through it, or remove what it points at when the job starts a model or a scan over."""
    link = next((path for path in out.rglob("*") if path.is_symlink()), None) if out.is_dir() else None
    if link is not None:
        raise InputError(
            f"{out} holds a symbolic link ({link.relative_to(out)}) that lmshield would write through; remove it or "
            f"choose a new {option}"
        )


def refuse_finished(out: Path, marker: str, what: str, overwrite: bool) -> None:
    """Refuse (before any work) to replace a finished ``what`` (its top file is ``marker``) unless ``overwrite``:
    a rerun with other settings must not silently replace a result others point at."""
    if not overwrite and (out / marker).is_file():
        raise InputError(
            f"{out} already holds a {what}; pass --overwrite (overwrite=True) to replace it, or choose another --out"
        )


def stamp(identity: dict[str, Any]) -> dict[str, Any]:
    """``identity`` with the lmshield version, in the form it takes after a JSON round trip (tuples as lists)."""
    return json.loads(json.dumps({**identity, "lmshield": __version__}))


def content_digest(value: Any) -> str:
    """sha256 of a JSON-serialisable value (texts, labels, ...), so progress is tied to the data it was made on."""
    return hashlib.sha256(json.dumps(value).encode()).hexdigest()


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Write through ``write(temporary)`` and move the result over ``path``: a reader never sees half a file.

    The temporary file is this call's own (another process writing ``path`` at the same time has another) and is
    removed when the write fails (a full disk, say), so ``path`` keeps its old content and nothing is left beside it.
    """
    temporary = temporary_name(path)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` whole (see :func:`atomic_write`): a full disk keeps the old file."""
    atomic_write(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def write_output(path: Path, text: str) -> None:
    """Write ``text`` to an output file the user named, its folder made if need be: whole (see :func:`write_text`),
    or, when ``path`` is a device or a pipe (``/dev/stdout``, a FIFO a reader waits on), into it as a stream:
    moving a file over it would replace the pipe with a file and leave its reader waiting."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not path.is_file():
        with path.open("w", encoding="utf-8") as stream:
            stream.write(text)
        return
    write_text(path, text)


def temporary_name(path: Path) -> Path:
    """A hidden name beside ``path`` that no other writer uses (see :func:`atomic_write`)."""
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


def temporary_of(name: str) -> str | None:
    """The name of the file ``name`` is a temporary of (see :func:`temporary_name`), else ``None``."""
    match = re.fullmatch(r"\.(.+)\.[0-9a-f]{8}\.tmp", name)
    return match[1] if match else None


def progress_key() -> bytes:
    """This user's key for sealing progress (made on first use, readable by the user only)."""
    path = Path(os.environ.get(KEY_FILE_ENV) or Path.home() / ".config" / "lmshield" / "progress.key")
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another lmshield process made it first
            pass
        else:
            with os.fdopen(handle, "wb") as file:
                file.write(secrets.token_bytes(32))
    key = path.read_bytes()
    if len(key) < 32:
        raise InputError(f"{path}: not an lmshield progress key (too short); delete it and a new one is made")
    return key


def write_own_marker(path: Path, note: str) -> None:
    """Write a marker file (an unfinished save, say) that only this user's lmshield can have written: ``note``
    and an HMAC of the file's resolved path under :func:`progress_key`. See :func:`is_own_marker`."""
    path.write_text(f"{note}\n{_marker_seal(path)}\n", encoding="utf-8")


def is_own_marker(path: Path) -> bool:
    """Whether ``path`` is a marker :func:`write_own_marker` wrote there: a folder shipped or copied with one
    (a model repository's) is not taken for this user's own unfinished work."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return False
    return bool(lines) and hmac.compare_digest(lines[-1], _marker_seal(path))


def _marker_seal(path: Path) -> str:
    return hmac.new(progress_key(), str(path.resolve()).encode(), hashlib.sha256).hexdigest()


def _seal(payload: dict[str, Any], directory: Path) -> str:
    files = payload.get(SEALED_FILES, [])
    if not isinstance(files, list) or not all(_own_file(directory, name) for name in files):
        raise TypeError("sealed files must be files of the progress folder")
    digests = {name: hashlib.sha256((directory / name).read_bytes()).hexdigest() for name in files}
    body = json.dumps({"payload": payload, "files": digests}, sort_keys=True)
    return hmac.new(progress_key(), body.encode(), hashlib.sha256).hexdigest()


def _own_file(directory: Path, name: Any) -> bool:
    return (
        isinstance(name, str)
        and Path(name).name == name
        and name not in ("", ".", "..")
        and (directory / name).is_file()
    )


def write_progress(path: Path, payload: dict[str, Any], files: tuple[str, ...] = ()) -> None:
    """Atomically write ``payload`` as JSON to ``path`` (its folder is created), sealed together with ``files``
    (names in ``path``'s folder, written before)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = json.loads(json.dumps({**payload, SEALED_FILES: list(files)}))  # as it reads back
    sealed = {**payload, SEAL: _seal(payload, path.parent)}
    atomic_write(path, lambda p: p.write_text(json.dumps(sealed), encoding="utf-8"))


def read_progress(path: Path, identity: dict[str, Any], job: str) -> dict[str, Any]:
    """The progress saved at ``path``, sealed by this user's lmshield (see the module's docstring), whose
    identity must equal ``identity`` (see :func:`stamp`).

    ``job`` names the kind of work in the error message ("a scan", "a training run", ...).
    """
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: unreadable progress ({exc}); {FRESH_HINT}") from exc
    seal = saved.pop(SEAL, None) if isinstance(saved, dict) else None
    try:
        sealed = isinstance(seal, str) and hmac.compare_digest(seal, _seal(saved, path.parent))
    except (OSError, TypeError) as exc:  # a sealed file missing, or names that are not file names
        raise InputError(f"{path}: progress names files that cannot be read ({exc}); {FRESH_HINT}") from exc
    if not sealed:
        raise InputError(
            f"{path}: progress that lmshield did not write for this user (copied, edited or shipped with the "
            f"data), so it is not resumed; {FRESH_HINT}"
        )
    if saved.get("identity") != identity:
        changed = ", ".join(identity_changes(saved.get("identity"), identity)) or "identity"
        raise InputError(f"{path.parent} holds progress of {job} made with another {changed}; {FRESH_HINT}")
    return saved


def identity_changes(saved: Any, current: Any, limit: int = 4) -> list[str]:
    """Dotted names of what differs between a saved identity and this run's (``settings.lr``, ``model``, ...):
    the first ``limit``, then how many more, so the refusal says which setting made the rerun another job."""
    names = _differing_keys(saved, current, "")
    return names if len(names) <= limit else [*names[:limit], f"{len(names) - limit} more"]


def _differing_keys(saved: Any, current: Any, prefix: str) -> list[str]:
    if not (isinstance(saved, dict) and isinstance(current, dict)):
        return [] if saved == current else [prefix or "identity"]
    names: list[str] = []
    for key in sorted(set(saved) | set(current), key=str):
        if saved.get(key) != current.get(key):
            names += _differing_keys(saved.get(key), current.get(key), f"{prefix}.{key}" if prefix else str(key))
    return names
