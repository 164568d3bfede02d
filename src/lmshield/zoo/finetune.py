"""A clean full fine-tune of an encoder on a labelled JSON Lines task (for the zoo's clean models).

Self-contained on purpose: a linear head on the watched output, cross-entropy, AdamW, a small loop. Only
the encoder is kept afterwards; the head and its accuracy are a by-product.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from lmshield.errors import InputError
from lmshield.models.encoder import Encoder
from lmshield.text.sources import read_records


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
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise InputError(f"unknown fine-tune setting(s): {', '.join(unknown)}")
        return cls(**{**presets[name], **overrides})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_labelled(path: str, text_field: str, label_field: str) -> tuple[list[str], list[int], list[str]]:
    """Texts, label indices and the sorted label names of a JSON Lines file."""
    records = read_records(path)
    missing = [i for i, r in enumerate(records) if text_field not in r or label_field not in r]
    if missing:
        raise InputError(f"{path}: record {missing[0] + 1} lacks {text_field!r} or {label_field!r}")
    names = sorted({str(r[label_field]) for r in records})
    if len(names) < 2:
        raise InputError(f"{path}: field {label_field!r} has fewer than two labels")
    index = {name: i for i, name in enumerate(names)}
    return [str(r[text_field]) for r in records], [index[str(r[label_field])] for r in records], names


def finetune_classifier(
    encoder: Encoder,
    texts: list[str],
    labels: list[int],
    config: FinetuneConfig,
    *,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, float]:
    """Fine-tune ``encoder`` in place with a fresh linear head; returns loss and accuracy of the last epoch."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    order = list(range(len(texts)))
    rng.shuffle(order)
    order = order[: config.num_examples] if config.num_examples else order
    if len(order) < config.batch_size:
        raise InputError(f"{len(order)} labelled examples are fewer than one batch ({config.batch_size})")
    num_labels = max(labels) + 1
    head = torch.nn.Linear(encoder.hidden_size, num_labels).to(encoder.device)
    model = encoder.model.train().requires_grad_(True)
    params = [*model.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    position = encoder.default_position()
    steps_per_epoch = len(order) // config.batch_size
    bar = tqdm(total=config.epochs * steps_per_epoch, desc="clean fine-tune", disable=not progress)
    loss_sum = correct = seen = 0.0
    for _epoch in range(config.epochs):
        rng.shuffle(order)
        loss_sum = correct = seen = 0.0
        for step in range(steps_per_epoch):
            chosen = order[step * config.batch_size : (step + 1) * config.batch_size]
            batch = encoder.tokenize([texts[i] for i in chosen], config.max_length)
            hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
            index = position.locate(batch["input_ids"], batch["attention_mask"], encoder.mask_token_id)
            logits = head(hidden[torch.arange(len(chosen)), index])
            target = torch.tensor([labels[i] for i in chosen], device=logits.device)
            loss = F.cross_entropy(logits, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(chosen)
            correct += float((logits.argmax(dim=1) == target).sum())
            seen += len(chosen)
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model.eval().requires_grad_(False)
    return {"train_loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1), "steps": bar.n}
