"""Device selection: CUDA when present, else CPU; an explicit choice always wins."""

from __future__ import annotations

import torch

from lmshield.errors import InputError


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """Return the torch device to use; ``None`` or ``"auto"`` picks CUDA when available."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} requested but CUDA is not available on this machine")
    return resolved


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch's global generators and return a CPU generator for explicit sampling."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
