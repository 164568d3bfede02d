"""User-facing errors: one clear line, a stable exit code, never a traceback in the CLI."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

EXIT_CLEAN = 0
EXIT_ERROR = 2
EXIT_BACKDOORED = 3


class LmshieldError(Exception):
    """An error the user can fix (bad path, bad file, bad setting). Its message is one line."""

    exit_code = EXIT_ERROR


class ModelLoadError(LmshieldError):
    """The model, its weights or its tokenizer cannot be loaded safely."""


class InputError(LmshieldError):
    """A text source, setting or file given by the user is unusable."""


class ScanError(LmshieldError):
    """The scan cannot reach a verdict on this model (which must then not pass as clean)."""


def reject_unknown(settings: Any, names: Iterable[str], what: str) -> None:
    """Raise :class:`InputError` naming the first of ``names`` that is not a field of the dataclass ``settings``."""
    known = {f.name for f in dataclasses.fields(settings)}
    unknown = sorted(set(names) - known)
    if unknown:
        raise InputError(f"unknown {what} setting(s): {', '.join(unknown)}")


def reject_unknown_params(estimator: Any, params: Iterable[str]) -> None:
    """Raise :class:`InputError` naming the ``params`` that are not among ``estimator.get_params()``."""
    unknown = sorted(set(params) - set(estimator.get_params()))
    if unknown:
        raise InputError(f"unknown {type(estimator).__name__} parameter(s): {', '.join(unknown)}")


def check_finite(values: dict[str, float], *, positive: bool = False) -> None:
    """Raise :class:`InputError` for a NaN or infinite value (or, with ``positive``, one at or below 0)."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"{name} must be a number, got {value!r}")
        if not math.isfinite(value) or (positive and value <= 0):
            raise InputError(f"{name} must be a finite{' positive' if positive else ''} number, got {value}")


def check_share(values: dict[str, float]) -> None:
    """Raise :class:`InputError` for a value that is not a number in [0, 1) (a rate, a dropout, a warm-up)."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:  # NaN fails too
            raise InputError(f"{name} must be in [0, 1), got {value!r}")


def check_bool(values: dict[str, Any]) -> None:
    """Raise :class:`InputError` for a value that is not ``True`` or ``False`` ("no" would read as true)."""
    for name, value in values.items():
        if not isinstance(value, bool):
            raise InputError(f"{name} must be true or false, got {value!r}")


def check_whole(values: dict[str, int], *, minimum: int = 1) -> None:
    """Raise :class:`InputError` for a value that is not a whole number of at least ``minimum``."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(f"{name} must be a whole number, got {value!r}")
        if value < minimum:
            raise InputError(f"{name} must be at least {minimum}, got {value}")


def require_file(path: str | os.PathLike[str], hint: str = "") -> Path:
    """``path`` as a ``Path`` when it is a file; else a one-line error that tells a folder, a device or pipe
    (``/dev/zero``, a FIFO: reading one never ends or waits forever) and a missing path apart."""
    file = Path(path)
    if file.is_dir():
        raise InputError(f"{path} is a folder, not a file{hint}")
    if file.exists() and not file.is_file():
        raise InputError(f"{path} is not a regular file (a device, pipe or socket); give a file{hint}")
    if not file.is_file():
        raise InputError(f"{path}: no such file")
    return file
