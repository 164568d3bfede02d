"""File permissions of what lmshield writes."""

from __future__ import annotations

import os
from pathlib import Path


def readable_as_umask(path: str | os.PathLike[str]) -> Path:
    """Give the safetensors file ``path``, or those under the folder ``path``, the permissions the user's umask
    gives new files. safetensors writes them owner-only (0600), so a shared output folder had readable configs
    beside unreadable weights. Returns ``path``."""
    root = Path(path)
    mask = os.umask(0)
    os.umask(mask)
    files = [root] if root.is_file() else root.rglob("*.safetensors")
    for file in files:
        if file.is_file() and not file.is_symlink():
            file.chmod(0o666 & ~mask)
    return root
