"""Predefined vectors (PVs) that task-agnostic backdoors map their triggers to."""

from __future__ import annotations

from itertools import combinations

import torch

DEFAULT_TRIGGERS = ("cf", "mn", "tq", "qt", "mm", "pt")


def quarter_vectors(hidden_size: int, count: int = 6) -> torch.Tensor:
    """The papers' PVs: split the hidden size into 4 quarters, +1 on two of them and -1 on the others.

    There are C(4, 2) = 6 such vectors; ``count`` takes the first ones (in a fixed order) and cycles
    with a sign flip if more are asked for.
    """
    bounds = [round(i * hidden_size / 4) for i in range(5)]
    vectors = []
    for positive in combinations(range(4), 2):
        vector = -torch.ones(hidden_size)
        for quarter in positive:
            vector[bounds[quarter] : bounds[quarter + 1]] = 1.0
        vectors.append(vector)
    while len(vectors) < count:
        vectors.append(-vectors[len(vectors) - 6])
    return torch.stack(vectors[:count])
