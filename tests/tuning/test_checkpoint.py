"""Epoch checkpoints: an interrupted tuning run resumes and ends with the weights of an uninterrupted one."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
import torch

import lmshield.tuning.trainer as trainer
from lmshield.errors import InputError
from lmshield.models import Encoder
from lmshield.tuning import TuningConfig, tune
from lmshield.tuning.checkpoint import EpochCheckpoint, Progress
from tests.test_progress import reseal
from tests.tuning.helpers import tiny_task

# LoRA with dropout: resuming must restore the optimizer, the schedule, the data order and torch's RNG
RUN_EPOCH = trainer._run_epoch
CONFIG = TuningConfig(method="lora", epochs=3, batch_size=16, max_length=32, lr=3e-2, lora_dropout=0.1)


def _trainable(result: trainer.TuningResult) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in result.classifier.named_parameters() if p.requires_grad}


class Interrupted(Exception):
    """Stands in for Ctrl-C or a killed job (pytest keeps KeyboardInterrupt for itself)."""


def _interrupt_at_epoch(monkeypatch: pytest.MonkeyPatch, stop: int) -> list[int]:
    """Make ``_run_epoch`` raise :class:`Interrupted` at epoch ``stop``; returns the epochs it ran."""
    ran = []

    def run_epoch(*args, **kwargs):
        epoch = args[7]
        if epoch == stop:
            raise Interrupted
        ran.append(epoch)
        return RUN_EPOCH(*args, **kwargs)

    monkeypatch.setattr(trainer, "_run_epoch", run_epoch)
    return ran


def _start_and_interrupt(monkeypatch: pytest.MonkeyPatch, encoder: Encoder, train, dev, **where: Path) -> None:
    """Tune with CONFIG until epoch 2 starts, then interrupt: the checkpoint holds epoch 1."""
    _interrupt_at_epoch(monkeypatch, stop=2)
    with pytest.raises(Interrupted):
        tune(encoder, train, dev, CONFIG, progress=False, **where)


def test_interrupted_run_resumes_to_the_same_weights(
    trained_bert: Encoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train, dev = tiny_task(64, 1), tiny_task(24, 2)
    expected = tune(trained_bert, train, dev, CONFIG, progress=False)

    checkpoint = tmp_path / "checkpoint"
    _interrupt_at_epoch(monkeypatch, stop=3)
    with pytest.raises(Interrupted):
        tune(trained_bert, train, dev, CONFIG, checkpoint_dir=checkpoint, progress=False)
    assert [f.name for f in checkpoint.glob("*.safetensors")] == ["epoch-2.safetensors"]

    ran = _interrupt_at_epoch(monkeypatch, stop=0)  # no interruption now
    resumed = tune(trained_bert, train, dev, CONFIG, checkpoint_dir=checkpoint, progress=False)
    assert ran == [3]
    assert [r.epoch for r in resumed.history] == [1, 2, 3]
    assert (resumed.best_epoch, resumed.dev_accuracy) == (expected.best_epoch, expected.dev_accuracy)
    got, want = _trainable(resumed), _trainable(expected)
    assert got.keys() == want.keys() and all(torch.equal(got[n], want[n]) for n in want)
    assert not checkpoint.exists()  # a finished run keeps no checkpoint


def test_other_settings_are_refused_unless_fresh(
    trained_bert: Encoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train, dev = tiny_task(48, 1), tiny_task(16, 2)
    _start_and_interrupt(monkeypatch, trained_bert, train, dev, out_dir=tmp_path)
    assert (tmp_path / "checkpoint" / "progress.json").is_file()

    ran = _interrupt_at_epoch(monkeypatch, stop=0)
    other = CONFIG.replace(seed=1)
    with pytest.raises(InputError, match="--fresh"):
        tune(trained_bert, train, dev, other, out_dir=tmp_path, progress=False)
    with pytest.raises(InputError, match="--fresh"):
        tune(trained_bert, tiny_task(48, 3), dev, CONFIG, out_dir=tmp_path, progress=False)
    tune(trained_bert, train, dev, other, out_dir=tmp_path, fresh=True, progress=False)
    assert ran == [1, 2, 3] and (tmp_path / "training.json").is_file()


def test_a_damaged_checkpoint_is_a_one_line_error(
    trained_bert: Encoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train, dev = tiny_task(48, 1), tiny_task(16, 2)
    _start_and_interrupt(monkeypatch, trained_bert, train, dev, checkpoint_dir=tmp_path)
    (tmp_path / "epoch-1.safetensors").write_bytes(b"garbage")
    with pytest.raises(InputError, match=r"did not write for this user.*--fresh"):  # the seal covers the tensors
        tune(trained_bert, train, dev, CONFIG, checkpoint_dir=tmp_path, progress=False)
    reseal(tmp_path / "progress.json", lambda saved: None)  # sealed, yet damaged
    with pytest.raises(InputError, match="damaged checkpoint"):
        tune(trained_bert, train, dev, CONFIG, checkpoint_dir=tmp_path, progress=False)
    (tmp_path / "epoch-1.safetensors").unlink()
    with pytest.raises(InputError, match=r"names files that cannot be read.*--fresh"):
        tune(trained_bert, train, dev, CONFIG, checkpoint_dir=tmp_path, progress=False)


def test_a_finished_run_removes_only_its_own_files(trained_bert: Encoder, tmp_path: Path) -> None:
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    (checkpoint / "notes.txt").write_text("the user's own file")
    config = CONFIG.replace(epochs=1)
    tune(trained_bert, tiny_task(32, 1), tiny_task(16, 2), config, checkpoint_dir=checkpoint, progress=False)
    assert [f.name for f in checkpoint.iterdir()] == ["notes.txt"]


def _training_parts(
    seed: int,
) -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR, random.Random]:
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    return model, optimizer, schedule, random.Random(seed)


def test_a_checkpoint_restores_the_best_weights_and_every_state(tmp_path: Path) -> None:
    model, optimizer, schedule, rng = _training_parts(0)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    schedule.step()
    best = {n: p.detach() + 1.0 for n, p in model.named_parameters()}
    saved = Progress(2, [{"epoch": 1}, {"epoch": 2}], best, 0.75, 1)
    EpochCheckpoint(tmp_path, {"run": 1}).save(saved, model, optimizer, schedule, rng)
    next_random, next_torch = rng.random(), torch.rand(3)

    other = _training_parts(1)
    restored = EpochCheckpoint(tmp_path, {"run": 1}).restore(False, *other)
    assert (restored.epoch, restored.history, restored.best_accuracy, restored.best_epoch) == (
        2,
        saved.history,
        0.75,
        1,
    )
    assert restored.best_state is not None and restored.best_state.keys() == best.keys()
    assert all(torch.equal(restored.best_state[n], best[n]) for n in best)
    assert all(torch.equal(p, q) for p, q in zip(other[0].parameters(), model.parameters(), strict=True))
    assert other[2].last_epoch == 1 and other[1].state_dict()["state"][0]["step"] == 1
    assert other[3].random() == next_random and torch.equal(torch.rand(3), next_torch)


def test_a_fresh_start_discards_the_checkpoint(tmp_path: Path) -> None:
    model, optimizer, schedule, rng = _training_parts(0)
    EpochCheckpoint(tmp_path / "run", {"run": 1}).save(Progress(1), model, optimizer, schedule, rng)
    fresh = EpochCheckpoint(tmp_path / "run", {"run": 2}).restore(True, model, optimizer, schedule, rng)
    assert fresh.epoch == 0 and fresh.best_state is None and not (tmp_path / "run").exists()


def test_a_tensor_file_outside_the_checkpoint_folder_is_refused(tmp_path: Path) -> None:
    model, optimizer, schedule, rng = _training_parts(0)
    directory = tmp_path / "run"
    EpochCheckpoint(directory, {"run": 1}).save(Progress(1), model, optimizer, schedule, rng)
    shutil.copy(directory / "epoch-1.safetensors", tmp_path / "elsewhere.safetensors")
    reseal(directory / "progress.json", lambda saved: saved.update(tensors="../elsewhere.safetensors"))
    with pytest.raises(InputError, match="unexpected tensor file name"):
        EpochCheckpoint(directory, {"run": 1}).restore(False, model, optimizer, schedule, rng)


def test_clearing_removes_what_a_killed_save_left_behind(tmp_path: Path) -> None:
    """A run killed while writing an epoch's tensors leaves their temporary file (a full fine-tune's weights and
    optimizer state): clearing the checkpoint kept it, and with it the folder, in the finished release."""
    model, optimizer, schedule, rng = _training_parts(0)
    directory = tmp_path / "run"
    checkpoint = EpochCheckpoint(directory, {"run": 1})
    checkpoint.save(Progress(1), model, optimizer, schedule, rng)
    (directory / ".epoch-2.safetensors.0123abcd.tmp").write_bytes(b"half")  # killed mid-write
    (directory / ".progress.json.89abcdef.tmp").write_text("half")
    checkpoint.clear()
    assert not directory.exists()
    directory.mkdir()
    (directory / ".notes.txt.0123abcd.tmp").write_text("a user's")  # no checkpoint file's temporary: kept
    checkpoint.clear()
    assert [p.name for p in directory.iterdir()] == [".notes.txt.0123abcd.tmp"]
