"""The one-line errors of user-facing checks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lmshield.errors import InputError, require_file


def test_a_device_or_pipe_is_not_taken_for_a_missing_file(tmp_path: Path) -> None:
    """/dev/zero or a FIFO given as an input file was refused as 'no such file', though it is there."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/zero")):
        with pytest.raises(InputError, match=r"is not a regular file \(a device, pipe or socket\)"):
            require_file(path)
    with pytest.raises(InputError, match="no such file"):
        require_file(tmp_path / "missing")
    with pytest.raises(InputError, match="is a folder"):
        require_file(tmp_path)
