"""PSIM's only training step: a PEFT module on the released model, trained on uniformly random labels.

Kept in one function so the training loop is :func:`lmshield.tuning.tune`'s, not a second one.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

from lmshield.defenses.psim.config import PSIMConfig
from lmshield.errors import InputError, check_whole
from lmshield.models.loading import resolve_model_dir
from lmshield.tuning import LabelledData, TunedClassifier, TuningConfig, get_method, tune

logger = logging.getLogger(__name__)

DEV_SIZE = 64


def random_labels(count: int, num_labels: int, seed: int) -> list[int]:
    """Uniformly random labels over ``num_labels`` classes: a shuffled, balanced draw (every class appears)."""
    labels = [i % num_labels for i in range(count)]
    random.Random(seed).shuffle(labels)
    return labels


def has_classification_head(model: str | Path | None) -> bool:
    """Whether the model directory was saved with a ``*ForSequenceClassification`` head."""
    return head_labels(model) is not None


def head_labels(model: str | Path | None) -> int | None:
    """How many classes the model directory's ``*ForSequenceClassification`` head has; ``None`` without one."""
    config = resolve_model_dir(model) / "config.json"
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None  # the loader then says what is wrong with the file
    architectures = data.get("architectures") if isinstance(data, dict) else None
    if not isinstance(architectures, list):
        return None
    if not any(str(name).endswith("ForSequenceClassification") for name in architectures):
        return None
    labels = data.get("id2label")  # transformers keeps the class count there (num_labels is derived from it)
    return len(labels) if isinstance(labels, dict) and labels else 2


def tuning_config(config: PSIMConfig, keep_head: bool, num_texts: int) -> TuningConfig:
    """The :class:`TuningConfig` of PSIM's module on ``num_texts`` texts (virtual tokens only for prompts)."""
    prompt = {}
    if get_method(config.method).uses_virtual_tokens:
        prompt = {"num_virtual_tokens": config.num_virtual_tokens, "encoder_hidden_size": config.encoder_hidden_size}
    return TuningConfig(
        method=config.method,
        keep_head=keep_head,
        lr=config.learning_rate(num_texts),
        epochs=config.epochs,
        batch_size=config.batch_size,
        max_length=config.max_length,
        warmup_ratio=config.warmup_ratio,
        train_pooler=config.train_pooler,
        checkpoint="last",
        seed=config.seed,
        **prompt,
    )


def train_random_label_module(
    model: str | Path | None,
    texts: list[str],
    num_labels: int,
    config: PSIMConfig,
    *,
    device: str | None = None,
    progress: bool = True,
) -> TunedClassifier:
    """Train PSIM's PEFT module on ``texts`` with random labels over ``num_labels`` classes.

    Random labels make dev accuracy meaningless, so the last epoch is kept; the dev set :func:`tune` wants
    is a random-labelled slice of the same texts, reported in the history only.
    """
    check_whole({"num_labels": num_labels}, minimum=2)
    if len(texts) < num_labels:
        raise InputError(f"PSIM needs at least {num_labels} task texts, got {len(texts)}")
    head = head_labels(model) if config.keep_head == "auto" else None
    keep = config.keep_head == "yes" or head == num_labels
    if head is not None and head != num_labels:
        logger.warning("the released head has %d classes and the task %d: PSIM reads a fresh head", head, num_labels)
    names = [str(i) for i in range(num_labels)]
    data = LabelledData(list(texts), random_labels(len(texts), num_labels, config.seed), names)
    dev = data.take(list(range(min(DEV_SIZE, len(data)))))
    result = tune(model, data, dev, tuning_config(config, keep, len(texts)), device=device, progress=progress)
    if not keep:  # said once the model has loaded: a folder that is no model gets its own error first
        logger.warning("no released classification head kept: PSIM reads a fresh head, expect weaker detection")
    return result.classifier
