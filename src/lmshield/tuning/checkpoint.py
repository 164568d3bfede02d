"""Epoch checkpoints of a tuning run, so that an interrupted run resumes where it stopped.

After each epoch the trainable tensors, the best ones so far, the optimizer and scheduler state and the random
number generators go to one safetensors file, the rest (history, identity) to ``progress.json``. A rerun with
the same model, data, settings and lmshield version continues from the last finished epoch and, on a CPU, ends
with bit for bit the weights of an uninterrupted run; anything else is refused unless the caller asks for a fresh
start.
"""

from __future__ import annotations

import logging
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lmshield.errors import InputError
from lmshield.progress import (
    FRESH_HINT,
    PROGRESS_JSON,
    atomic_write,
    content_digest,
    read_progress,
    stamp,
    temporary_of,
    write_progress,
)

logger = logging.getLogger(__name__)

TENSOR_FILE = re.compile(r"epoch-\d+\.safetensors")


def data_digest(texts: list[str], labels: list[int]) -> str:
    """sha256 of a labelled data set (texts and labels, in order)."""
    return content_digest([texts, labels])


@dataclass
class Progress:
    """What a resumed run starts from."""

    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_state: dict[str, torch.Tensor] | None = None
    best_accuracy: float = -1.0
    best_epoch: int = 0


class EpochCheckpoint:
    """Reads and writes the epoch checkpoints of one run in ``directory`` (``None``: keeps nothing)."""

    def __init__(self, directory: str | Path | None, identity: dict[str, Any]) -> None:
        self.directory = None if directory is None else Path(directory)
        self.identity = stamp(identity)

    def restore(
        self,
        fresh: bool,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        schedule: torch.optim.lr_scheduler.LRScheduler,
        rng: random.Random,
    ) -> Progress:
        """Load the last checkpoint into the given objects; an empty :class:`Progress` when there is none."""
        if self.directory is None or not (self.directory / PROGRESS_JSON).is_file():
            return Progress()
        if fresh:
            self.clear()
            return Progress()
        saved = read_progress(self.directory / PROGRESS_JSON, self.identity, "a training run")
        try:
            progress = self._load(saved, model, optimizer, schedule, rng)
        except (OSError, KeyError, TypeError, ValueError, SafetensorError) as exc:
            raise InputError(f"{self.directory}: damaged checkpoint ({exc}); {FRESH_HINT}") from exc
        logger.info("resuming after epoch %d from %s", progress.epoch, self.directory)
        return progress

    def _load(
        self,
        saved: dict[str, Any],
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        schedule: torch.optim.lr_scheduler.LRScheduler,
        rng: random.Random,
    ) -> Progress:
        if not TENSOR_FILE.fullmatch(str(saved["tensors"])):
            raise ValueError(f"unexpected tensor file name {saved['tensors']!r}")
        tensors = load_file(str(self.directory / saved["tensors"]))
        restore_trainable(model, _with_prefix(tensors, "param."))
        optimizer.load_state_dict(
            {"state": _optimizer_state(tensors, saved["optimizer_scalars"]), "param_groups": saved["param_groups"]}
        )
        schedule.load_state_dict(saved["schedule"])
        version, state, gauss = saved["python_rng"]
        rng.setstate((version, tuple(state), gauss))
        torch.set_rng_state(tensors["rng.torch"])
        cuda = _with_prefix(tensors, "rng.cuda.")
        cuda_states = [cuda[k] for k in sorted(cuda, key=int)]
        if cuda_states and torch.cuda.is_available():
            for index, cuda_state in enumerate(cuda_states[: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(cuda_state, index)
        best = _with_prefix(tensors, "best.") or None
        return Progress(saved["epoch"], saved["history"], best, saved["best_accuracy"], saved["best_epoch"])

    def save(
        self,
        progress: Progress,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        schedule: torch.optim.lr_scheduler.LRScheduler,
        rng: random.Random,
    ) -> None:
        """Write the state after ``progress.epoch``; the previous epoch's file goes once the new one is in place."""
        if self.directory is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        tensors = {f"param.{n}": p.detach() for n, p in model.named_parameters() if p.requires_grad}
        tensors |= {f"best.{n}": t for n, t in (progress.best_state or {}).items()}
        optim = optimizer.state_dict()
        scalars: dict[str, Any] = {}
        for index, values in optim["state"].items():
            for key, value in values.items():
                if torch.is_tensor(value):
                    tensors[f"optim.{index}.{key}"] = value
                else:
                    scalars[f"{index}.{key}"] = value
        tensors["rng.torch"] = torch.get_rng_state()
        if torch.cuda.is_initialized():  # a CPU run on a GPU machine starts no CUDA context here
            tensors |= {f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
        name = f"epoch-{progress.epoch}.safetensors"
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        atomic_write(self.directory / name, lambda path: save_file(tensors, str(path)))
        payload = {
            "identity": self.identity,
            "epoch": progress.epoch,
            "history": progress.history,
            "best_accuracy": progress.best_accuracy,
            "best_epoch": progress.best_epoch,
            "tensors": name,
            "optimizer_scalars": scalars,
            "param_groups": optim["param_groups"],
            "schedule": schedule.state_dict(),  # a plain function's lr_lambdas entry is None: JSON-safe
            "python_rng": rng.getstate(),
        }
        write_progress(self.directory / PROGRESS_JSON, payload, files=(name,))
        for old in self.directory.glob("epoch-*.safetensors"):
            if old.name != name:
                old.unlink()

    def clear(self) -> None:
        """Remove the files the checkpoints wrote (a finished run needs none); the folder goes only when empty,
        so anything else a user kept there stays."""
        if self.directory is None or not self.directory.is_dir():
            return
        for file in self.directory.iterdir():
            if file.is_file() and any(_is_own(name) for name in (file.name, temporary_of(file.name))):
                file.unlink()
        if not any(self.directory.iterdir()):
            self.directory.rmdir()


def _is_own(name: str | None) -> bool:
    """Whether ``name`` is a file the checkpoints write (a temporary of one, left by a killed run, goes too)."""
    return name is not None and (TENSOR_FILE.fullmatch(name) is not None or name == PROGRESS_JSON)


def _with_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def restore_trainable(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy ``state`` (parameter name -> tensor) into the model's parameters of those names."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in state:
                p.copy_(state[name])


def _optimizer_state(tensors: dict[str, torch.Tensor], scalars: dict[str, Any]) -> dict[int, dict[str, Any]]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in [*_with_prefix(tensors, "optim.").items(), *scalars.items()]:
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    return state


def clear_checkpoint(directory: str | Path) -> None:
    """Remove a finished run's epoch checkpoints from ``directory`` (see :meth:`EpochCheckpoint.clear`)."""
    EpochCheckpoint(directory, {}).clear()
