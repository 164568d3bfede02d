"""Device selection: CUDA when present, else CPU; ``LMSHIELD_DEVICE`` sets the default; an explicit choice wins."""

from __future__ import annotations

import os

import torch

from lmshield.errors import InputError

DEVICE_VARIABLE = "LMSHIELD_DEVICE"
SUPPORTED = ("cpu", "cuda")


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """Return the torch device to use.

    ``None`` or ``"auto"`` takes the ``LMSHIELD_DEVICE`` environment variable when it is set (``cpu``,
    ``cuda``, ``cuda:N``), else CUDA when available, else the CPU.
    """
    source = "device"
    if device is None or str(device) == "auto":
        device, source = os.environ.get(DEVICE_VARIABLE, "").strip() or "auto", DEVICE_VARIABLE
        if device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"unknown {source} {str(device)!r}: use auto, cpu, cuda or cuda:N") from exc
    if resolved.type not in SUPPORTED:  # mps, xpu, meta, ...: torch parses them, lmshield does not run there
        raise InputError(f"unsupported {source} {str(device)!r}: use auto, cpu, cuda or cuda:N")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"{source} {str(device)!r} requested but CUDA is not available on this machine")
    return resolved


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch's global generators and return a CPU generator for explicit sampling."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
