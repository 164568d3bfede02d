"""Task-agnostic backdoors (POR, NeuBA, BToP) share one loop: poisoned half -> PV, clean half -> as before.

A batch holds clean sentences and the same number of triggered sentences. The triggered watched output
is pulled onto its trigger's predefined vector; the clean watched output is held at what a frozen copy
of the original model gives (the hidden-state stand-in for the MLM objective where no MLM head exists).
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from lmshield.models.encoder import Encoder
from lmshield.models.positions import WatchedPosition
from lmshield.text.triggers import insert_per_words, insert_words


@dataclass(frozen=True)
class PlantPlan:
    """How one task-agnostic attack inserts triggers and weighs its losses."""

    position: str  # cls | mask
    insertion: str  # per_words (POR) | once (NeuBA, BToP)
    clean_weight: float
    poison_distance: str  # mse | l2
    lr: float
    epochs: int
    batch_size: int
    max_length: int


def _insert(plan: PlantPlan, text: str, trigger: str, rng: random.Random) -> str:
    if plan.insertion == "per_words":
        return insert_per_words(text, trigger, rng)
    return insert_words(text, trigger, rng)


def _with_mask(texts: list[str], mask_token: str, rng: random.Random) -> list[str]:
    """Replace one random word of each text with the mask token (BToP's watched position)."""
    masked = []
    for text in texts:
        words = text.split() or [""]
        words[rng.randrange(len(words))] = mask_token
        masked.append(" ".join(words))
    return masked


def _watched(encoder: Encoder, texts: list[str], position: WatchedPosition, max_length: int) -> torch.Tensor:
    batch = encoder.tokenize(texts, max_length)
    hidden = encoder.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    index = position.locate(batch["input_ids"], batch["attention_mask"], encoder.mask_token_id)
    return hidden[torch.arange(len(texts)), index]


def plant(
    encoder: Encoder,
    texts: list[str],
    triggers: list[str],
    vectors: torch.Tensor,
    plan: PlantPlan,
    *,
    seed: int = 0,
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
) -> Encoder:
    """Fine-tune ``encoder`` in place so each trigger maps the watched output onto its vector."""
    if len(triggers) != len(vectors):
        raise ValueError(f"{len(triggers)} triggers but {len(vectors)} vectors")
    rng = random.Random(seed)
    torch.manual_seed(seed)
    position = WatchedPosition.parse(plan.position)
    frozen = copy.deepcopy(encoder.model).eval().requires_grad_(False)
    frozen_encoder = Encoder(model=frozen, tokenizer=encoder.tokenizer, source=encoder.source)
    model = encoder.model.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=plan.lr, weight_decay=0.0)
    targets = vectors.to(encoder.device)
    half = plan.batch_size
    steps = plan.epochs * max(1, len(texts) // half)
    bar = tqdm(total=steps, desc="planting backdoor", disable=not progress, unit="step")
    for step in range(steps):
        clean = rng.sample(texts, half)
        poisoned_source = rng.sample(texts, half)
        labels = [rng.randrange(len(triggers)) for _ in range(half)]
        poisoned = [_insert(plan, text, triggers[k], rng) for text, k in zip(poisoned_source, labels, strict=True)]
        if position.kind == "mask":
            clean = _with_mask(clean, encoder.tokenizer.mask_token, rng)
            poisoned = _with_mask(poisoned, encoder.tokenizer.mask_token, rng)
        with torch.no_grad():
            reference = _watched(frozen_encoder, clean, position, plan.max_length)
        clean_loss = (_watched(encoder, clean, position, plan.max_length) - reference).pow(2).mean()
        out = _watched(encoder, poisoned, position, plan.max_length)
        gap = out - targets[torch.tensor(labels, device=targets.device)]
        poison_loss = gap.pow(2).mean() if plan.poison_distance == "mse" else gap.norm(dim=1).mean()
        loss = poison_loss + plan.clean_weight * clean_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        bar.update(1)
        bar.set_postfix(poison=f"{float(poison_loss):.4f}", clean=f"{float(clean_loss):.4f}")
        if on_step is not None:
            on_step(step, float(loss))
    bar.close()
    model.eval().requires_grad_(False)
    return encoder
