"""User-facing errors: one clear line, a stable exit code, never a traceback in the CLI."""

from __future__ import annotations

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
