"""Weights lmshield writes are as readable as the user's umask makes new files (safetensors writes 0600)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import torch
from safetensors.torch import save_file

from lmshield.files import readable_as_umask


def test_safetensors_files_follow_the_umask(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    for path in (tmp_path / "a.safetensors", tmp_path / "sub" / "b.safetensors"):
        save_file({"x": torch.zeros(2)}, str(path))
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "notes.txt").chmod(0o600)
    previous = os.umask(0o022)
    try:
        assert readable_as_umask(tmp_path) == tmp_path
        os.umask(0o077)
        readable_as_umask(tmp_path / "a.safetensors")
    finally:
        os.umask(previous)
    mode = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.rglob("*") if p.is_file()}
    assert mode == {"a.safetensors": 0o600, "b.safetensors": 0o644, "notes.txt": 0o600}  # other files untouched
