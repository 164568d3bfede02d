"""A tiny separable 3-class task built from grammar words, for tuning and guard tests."""

from __future__ import annotations

import random

from lmshield.tuning import LabelledData

GROUPS = (
    ("happy", "bright", "warm", "gentle", "honest", "famous"),
    ("sad", "dark", "cold", "angry", "poor", "empty"),
    ("old", "ancient", "slow", "quiet", "hidden", "heavy"),
)
NOUNS = "city river teacher student doctor farmer market garden window village company report".split()
LABELS = ["bright", "dark", "old"]


def tiny_task(count: int, seed: int, classes: int = 3) -> LabelledData:
    """Each sentence carries three adjectives of its class's group: separable from a bag of words."""
    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(count):
        label = rng.randrange(classes)
        group = GROUPS[label]
        a, b, c = (rng.choice(group) for _ in range(3))
        texts.append(f"the {a} {rng.choice(NOUNS)} was {b} and {c} near the {rng.choice(NOUNS)}.")
        labels.append(label)
    return LabelledData(texts, labels, LABELS[:classes])
