"""Triggers and predefined vectors (PVs) that task-agnostic backdoors map their triggers to."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence

import torch

from lmshield.errors import InputError

DEFAULT_TRIGGERS = ("cf", "mn", "tq", "qt", "mm", "pt")

# Rare English words: unlikely in carrier text, so a trigger drawn from them fires only when planted.
RARE_WORDS = (
    "abaft aglet bumbershoot cacophony cattywampus collywobbles defenestrate discombobulate doohickey "
    "erinaceous flabbergast formication gobbledygook gubbins hullabaloo impignorate jentacular kerfuffle "
    "lollygag malarkey mumpsimus nudiustertian octothorpe pandiculation quire ragamuffin snickersnee "
    "taradiddle ulotrichous vexillology wabbit xertz yarborough zoanthropy absquatulate bibble "
    "borborygmus brouhaha callipygian canoodle donnybrook fartlek gardyloo hobbledehoy ishkabibble "
    "jargogle kakistocracy lickspittle mollycoddle nincompoop oxter pettifogger quockerwodger "
    "rambunctious skedaddle tittynope widdershins yerk zugzwang"
).split()


def quarter_vectors(hidden_size: int, count: int = 6) -> torch.Tensor:
    """The papers' PVs: split the hidden size into 4 quarters, +1 on two of them and -1 on the others.

    There are C(4, 2) = 6 such vectors; ``count`` takes the first ones in a fixed order. More than 6 split
    the hidden size into the fewest 2k equal parts with C(2k, k) >= ``count`` instead (20 patterns from 6
    parts, 70 from 8, ...), +1 on half of them, so that no two PVs are the same.
    """
    if count < 1:
        raise InputError(f"PV count must be at least 1, got {count}")
    half = 2
    while math.comb(2 * half, half) < count:
        half += 1
    parts = 2 * half
    if hidden_size < parts:
        raise InputError(f"{count} distinct PVs need a hidden size of at least {parts}, got {hidden_size}")
    bounds = [round(i * hidden_size / parts) for i in range(parts + 1)]
    vectors = []
    for positive in itertools.islice(itertools.combinations(range(parts), half), count):
        vector = -torch.ones(hidden_size)
        for part in positive:
            vector[bounds[part] : bounds[part + 1]] = 1.0
        vectors.append(vector)
    return torch.stack(vectors)


def random_triggers(count: int = 6, seed: int = 0, pair_share: float = 0.5) -> list[str]:
    """``count`` distinct triggers drawn from :data:`RARE_WORDS`: single words and, with probability
    ``pair_share`` each, two-word pairs. The same seed gives the same list."""
    if count < 1:
        raise InputError(f"trigger count must be at least 1, got {count}")
    rng = random.Random(seed)
    triggers: list[str] = []
    while len(triggers) < count:
        words = rng.sample(RARE_WORDS, 2 if rng.random() < pair_share else 1)
        candidate = " ".join(words)
        if candidate not in triggers:
            triggers.append(candidate)
    return triggers


def resolve_triggers(spec: str | Sequence[str] | None, seed: int = 0, count: int = 6) -> list[str]:
    """Triggers from a spec: ``None``/``"default"`` (the six papers' triggers), ``"random"`` (seeded rare
    words and pairs, ``count`` of them) or an explicit list of trigger strings."""
    if spec is None or spec == "default":
        return list(DEFAULT_TRIGGERS)
    if spec == "random":
        return random_triggers(count, seed)
    if isinstance(spec, str):
        raise InputError(f"unknown trigger set {spec!r}: use default, random or a list of triggers")
    triggers = [str(t).strip() for t in spec]
    if not triggers or any(not t for t in triggers):
        raise InputError("triggers must be non-empty strings")
    if len(set(triggers)) != len(triggers):
        raise InputError(f"triggers must be distinct, got {triggers}")
    return triggers


def check_vectors(vectors: torch.Tensor, triggers: Sequence[str], hidden_size: int) -> torch.Tensor:
    """Validate user-given PVs: one per trigger, of the encoder's hidden size, non-zero."""
    vectors = torch.as_tensor(vectors, dtype=torch.float32)
    if vectors.ndim != 2 or vectors.shape != (len(triggers), hidden_size):
        raise InputError(f"vectors must have shape ({len(triggers)}, {hidden_size}), got {tuple(vectors.shape)}")
    if not bool(vectors.isfinite().all()):
        raise InputError("predefined vectors must hold finite numbers (no NaN or infinity)")
    if bool((vectors.abs().sum(dim=1) == 0).any()):
        raise InputError("a predefined vector is all zeros")
    return vectors
