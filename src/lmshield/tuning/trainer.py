"""One training loop for every method and head: AdamW, linear warm-up/decay, best checkpoint on dev."""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from lmshield.devices import seed_everything
from lmshield.errors import InputError
from lmshield.jsonio import unmark, write_json
from lmshield.locks import holds
from lmshield.models.encoder import Encoder, sha256_of_files
from lmshield.models.loading import folder_fingerprint
from lmshield.progress import CHECKPOINT_DIR
from lmshield.tuning.checkpoint import EpochCheckpoint, data_digest, restore_trainable
from lmshield.tuning.classifier import TUNING_JSON, TunedClassifier
from lmshield.tuning.config import TuningConfig
from lmshield.tuning.data import LabelledData

logger = logging.getLogger(__name__)

SMALL_DEV = 20  # fewer dev examples than this make the best-epoch choice a coin toss

HISTORY_JSON = "training.json"


@dataclass
class EpochRecord:
    epoch: int
    loss: float
    dev_accuracy: float
    seconds: float


@dataclass
class TuningResult:
    """The best classifier (by dev accuracy) and how training went."""

    classifier: TunedClassifier
    dev_accuracy: float
    best_epoch: int
    history: list[EpochRecord] = field(default_factory=list)
    resumed_epochs: int = 0  # the first epochs of history, trained by an earlier, interrupted run

    @property
    def resumed_seconds(self) -> float:
        """Training time spent by the earlier run(s) this one resumed: a job's total is this run's plus it."""
        return sum(record.seconds for record in self.history[: self.resumed_epochs])

    def to_dict(self) -> dict:
        return {
            "dev_accuracy": self.dev_accuracy,
            "best_epoch": self.best_epoch,
            "history": [asdict(r) for r in self.history],
        }


def accuracy(classifier: TunedClassifier, data: LabelledData, batch_size: int | None = None) -> float:
    """Share of ``data`` the classifier labels correctly."""
    return share_correct(classifier.predict(data.texts, batch_size) if len(data) else [], data.labels)


def share_correct(predicted: list[int], labels: list[int]) -> float:
    """Share of ``predicted`` labels equal to ``labels`` (0.0 for none): :func:`accuracy` of answers in hand."""
    return sum(p == y for p, y in zip(predicted, labels, strict=True)) / len(labels) if len(labels) else 0.0


@holds("out_dir")
def tune(
    model: Encoder | str | Path | None,
    train: LabelledData,
    dev: LabelledData | None = None,
    config: TuningConfig | None = None,
    *,
    out_dir: str | Path | None = None,
    checkpoint_dir: str | Path | None = None,
    fresh: bool = False,
    device: str | torch.device | None = None,
    allow_pickle: bool = False,
    progress: bool = True,
    keep_checkpoint: bool = False,
) -> TuningResult:
    """Tune a classifier on ``train``; keep the epoch with the best ``dev`` accuracy (or the last one).

    Without ``dev``, a seeded ``config.dev_fraction`` of ``train`` is held out. With ``out_dir`` the best
    classifier and the training history are saved there. Each finished epoch is checkpointed in
    ``checkpoint_dir`` (default ``out_dir/checkpoint``), so a rerun with the same model, data and settings
    resumes and ends with the same weights (bit for bit on a CPU); ``fresh`` discards an earlier run's
    checkpoint. The checkpoint is removed when training ends, unless ``keep_checkpoint`` (a caller that
    writes more from the result removes it afterwards: :func:`lmshield.tuning.checkpoint.clear_checkpoint`).
    Naming the starting weights for the checkpoint reads local weight files once (about a second per GB).
    """
    config = config or TuningConfig()
    if not isinstance(config, TuningConfig):
        raise InputError(f"config must be a TuningConfig, got {type(config).__name__}")
    _check_labelled(train, "train")
    _warn_of_unlearnt_labels(train)
    if dev is None:
        _check_labels(train)  # before the split: a single label is the data's fault, not the split's
        whole = len(train)
        train, dev = train.split(config.dev_fraction, config.seed)
        if len(set(train.labels)) < 2:
            raise InputError(
                f"{whole} training examples are too few to hold out a dev set: the {len(dev)} held out left a "
                "single label to train on; give dev data (dev=..., --dev) or more training data"
            )
    _check_labelled(dev, "dev")
    _check_data(train, dev)
    if config.checkpoint == "best" and len(dev) < SMALL_DEV:
        logger.warning("the best epoch is picked on %d dev examples: its dev accuracy says little", len(dev))
    seed_everything(config.seed)
    classifier = TunedClassifier.build(model, config, train.label_names, device=device, allow_pickle=allow_pickle)
    if checkpoint_dir is None and out_dir is not None:
        checkpoint_dir = Path(out_dir) / CHECKPOINT_DIR
    identity = {}
    if checkpoint_dir is not None:
        identity = {
            "model": _model_identity(model),
            "config": config.to_dict(),
            "train": data_digest(train.texts, train.labels),
            "dev": data_digest(dev.texts, dev.labels),
        }
    checkpoint = EpochCheckpoint(checkpoint_dir, identity)
    result = _train(classifier, train, dev, config, progress, checkpoint, fresh, keep_last=keep_checkpoint)
    _warn_if_no_better_than_majority(result.dev_accuracy, dev, config)
    if out_dir is not None:  # the history first: the classifier's tuning.json, written last, marks it finished
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        unmark(Path(out_dir) / TUNING_JSON)  # an earlier run's classifier must not pass for this history's
        write_json(Path(out_dir) / HISTORY_JSON, result.to_dict())
        classifier.save_pretrained(out_dir)
    if not keep_checkpoint:
        checkpoint.clear()
    return result


def _warn_if_no_better_than_majority(dev_accuracy: float, dev: LabelledData, config: TuningConfig) -> None:
    """A classifier no better than always answering the commonest dev label learnt nothing: say so, since
    everything measured on it next (a guard's ASR, PSIM's clean accuracy) would mean little."""
    majority = max(dev.labels.count(label) for label in set(dev.labels)) / len(dev)
    if config.checkpoint == "best" and dev_accuracy <= majority:
        logger.warning(
            "dev accuracy %.3f is no better than always answering the commonest label (%.3f): the classifier "
            "learnt little; give more training data or epochs",
            dev_accuracy, majority,
        )  # fmt: skip


def _model_identity(model: Encoder | str | Path | None) -> str:
    """What names the starting weights: their sha256 for local files, else the hub id (or the default)."""
    if model is None:
        return "embedded default"
    if isinstance(model, Encoder):
        return model.fingerprint
    path = Path(model)
    if path.is_dir():
        return folder_fingerprint(path, allow_pickle=True)
    return sha256_of_files([path]) if path.is_file() else str(model)


def _check_labelled(data: object, name: str) -> None:
    if not isinstance(data, LabelledData):
        raise InputError(
            f"{name} data must be a LabelledData, got {type(data).__name__}: build one with "
            "LabelledData(texts, labels, label_names) or read_labelled(path)"
        )


def _check_labels(train: LabelledData) -> None:
    if len(train) == 0:
        raise InputError("training data must be non-empty")
    if len(set(train.labels)) < 2:
        raise InputError("the training data holds a single label; a classifier needs at least two")


def _warn_of_unlearnt_labels(train: LabelledData) -> None:
    """Name the labels no training example carries: the classifier never learns to answer them (integer labels
    are class indices, so a file labelled 1 and 2 has three classes, and class 0 none of its examples)."""
    seen = set(train.labels)
    missing = [name for index, name in enumerate(train.label_names) if index not in seen]
    if train.labels and missing:
        logger.warning(
            "%d of the %d labels have no training example (%s): the classifier never learns them; "
            "integer labels are class indices, counted from 0",
            len(missing), train.num_labels, ", ".join(missing[:5]),
        )  # fmt: skip


def _check_data(train: LabelledData, dev: LabelledData) -> None:
    if len(train) == 0 or len(dev) == 0:
        raise InputError("training and dev data must both be non-empty")
    if train.label_names != dev.label_names:
        raise InputError(f"train labels {train.label_names} and dev labels {dev.label_names} differ")
    _check_labels(train)


def _train(
    classifier: TunedClassifier,
    train: LabelledData,
    dev: LabelledData,
    config: TuningConfig,
    progress: bool,
    checkpoint: EpochCheckpoint | None = None,
    fresh: bool = False,
    keep_last: bool = False,
) -> TuningResult:
    checkpoint = checkpoint or EpochCheckpoint(None, {})
    params = classifier.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    schedule = _linear_schedule(optimizer, steps_per_epoch * config.epochs, config.warmup_ratio)
    rng = random.Random(config.seed)
    state = checkpoint.restore(fresh, classifier, optimizer, schedule, rng)
    if state.best_state is None and config.checkpoint == "best":
        state.best_state = _snapshot(classifier)
    history = [EpochRecord(**record) for record in state.history]
    resumed_epochs = len(history)
    for epoch in range(state.epoch + 1, config.epochs + 1):
        started = time.perf_counter()
        loss = _run_epoch(classifier, train, optimizer, schedule, params, rng, config, epoch, progress)
        if not math.isfinite(loss):  # the weights are NaN now: saving them would give a classifier none can load
            raise InputError(
                f"training diverged in epoch {epoch} (loss {loss}); lower the learning rate (lr {config.lr:g})"
            )
        dev_accuracy = accuracy(classifier, dev, config.eval_batch_size)
        history.append(EpochRecord(epoch, loss, dev_accuracy, time.perf_counter() - started))
        if config.checkpoint == "best":
            logger.info("epoch %d: loss %.4f, dev accuracy %.4f", epoch, loss, dev_accuracy)
        else:  # the last epoch is kept whatever its dev accuracy (PSIM's random labels make it meaningless)
            logger.info("epoch %d: loss %.4f", epoch, loss)
        if config.checkpoint == "best" and dev_accuracy > state.best_accuracy:
            state.best_state, state.best_accuracy, state.best_epoch = _snapshot(classifier), dev_accuracy, epoch
        state.epoch, state.history = epoch, [asdict(r) for r in history]
        if epoch < config.epochs or keep_last:  # the last one only for a caller that writes more from it
            checkpoint.save(state, classifier, optimizer, schedule, rng)
    if config.checkpoint == "last":
        best_accuracy, best_epoch = history[-1].dev_accuracy, config.epochs
    else:
        restore_trainable(classifier, state.best_state)
        best_accuracy, best_epoch = state.best_accuracy, state.best_epoch
    classifier.eval()
    return TuningResult(classifier, best_accuracy, best_epoch, history, resumed_epochs)


def _run_epoch(
    classifier: TunedClassifier,
    train: LabelledData,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    params: list[torch.nn.Parameter],
    rng: random.Random,
    config: TuningConfig,
    epoch: int,
    progress: bool,
) -> float:
    classifier.train()
    order = list(range(len(train)))
    rng.shuffle(order)
    total, count = 0.0, 0
    batches = range(0, len(order), config.batch_size)
    bar = tqdm(batches, desc=f"epoch {epoch}/{config.epochs}", disable=not progress, unit="batch", leave=False)
    for start in bar:
        rows = order[start : start + config.batch_size]
        batch = classifier.encode([train.texts[i] for i in rows])
        labels = torch.tensor([train.labels[i] for i in rows], device=classifier.device)
        loss = torch.nn.functional.cross_entropy(classifier(**batch).logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        schedule.step()
        total, count = total + loss.item() * len(rows), count + len(rows)
        bar.set_postfix(loss=f"{total / count:.4f}", refresh=False)  # drawn at the bar's own pace
    bar.close()
    return total / max(count, 1)


def _linear_schedule(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = int(total_steps * warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _snapshot(classifier: TunedClassifier) -> dict[str, torch.Tensor]:
    """Copies of the trainable tensors (the only ones training changes)."""
    return {name: p.detach().clone() for name, p in classifier.named_parameters() if p.requires_grad}
