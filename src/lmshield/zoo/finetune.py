"""A clean full fine-tune of an encoder on a labelled task (for the zoo's clean models).

It runs the shared training loop of :mod:`lmshield.tuning` (method ``full``); only the encoder is kept.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Any

from lmshield.errors import InputError, reject_unknown
from lmshield.models.encoder import Encoder
from lmshield.tuning.data import LabelledData


@dataclass(frozen=True)
class FinetuneConfig:
    """Settings of the clean fine-tune. ``paper``: 3 epochs at lr 2e-5 over all examples (a usual
    BERT fine-tune); ``fast``: 1 epoch over 2,000 examples at lr 5e-5 (minutes on a CPU)."""

    lr: float = 2e-5
    epochs: int = 3
    batch_size: int = 16
    max_length: int = 64
    num_examples: int | None = None  # None: all
    weight_decay: float = 0.01

    @classmethod
    def preset(cls, name: str = "paper", **overrides: Any) -> FinetuneConfig:
        presets = {"paper": {}, "fast": {"lr": 5e-5, "epochs": 1, "num_examples": 2000}}
        if name not in presets:
            raise InputError(f"unknown fine-tune preset {name!r}: use paper or fast")
        reject_unknown(cls, overrides, "fine-tune")
        return cls(**{**presets[name], **overrides})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def finetune_encoder(
    encoder: Encoder, data: LabelledData, config: FinetuneConfig, *, seed: int = 0, progress: bool = True
) -> tuple[Encoder, dict[str, float]]:
    """Fully fine-tune ``encoder`` with a fresh [CLS] head through :mod:`lmshield.tuning`.

    A seeded subset of ``config.num_examples`` examples is used (10 % of it held out for the dev score).
    Returns the tuned encoder (the head is a by-product and is dropped) and the dev accuracy.
    """
    from lmshield.tuning import TuningConfig, tune

    order = list(range(len(data)))
    random.Random(seed).shuffle(order)
    subset = data.take(order[: config.num_examples] if config.num_examples else order)
    if len(subset) < config.batch_size:
        raise InputError(f"{len(subset)} labelled examples are fewer than one batch ({config.batch_size})")
    tuning = TuningConfig(
        method="full",
        lr=config.lr,
        epochs=config.epochs,
        batch_size=config.batch_size,
        max_length=config.max_length,
        weight_decay=config.weight_decay,
        seed=seed,
    )
    result = tune(encoder, subset, config=tuning, progress=progress)
    tuned = Encoder(model=result.classifier.backbone.eval(), tokenizer=encoder.tokenizer, source=encoder.source)
    return tuned, {"dev_accuracy": result.dev_accuracy, "examples": float(len(subset))}
