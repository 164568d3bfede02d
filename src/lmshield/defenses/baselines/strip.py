"""STRIP for text (Gao et al. 2021): a triggered input keeps its prediction when perturbed, so the
entropy of the victim's predictions over perturbed copies is low. Needs no model beyond the victim.

Perturbation: a share of the input's words is replaced by words drawn from held-out clean texts. The
poison score is the negated mean entropy (higher = more likely poisoned), so it thresholds like PSIM's.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from lmshield.defenses.psim.thresholds import calibrate_threshold, flag_scores
from lmshield.errors import InputError


class ProbClassifier(Protocol):
    """A classifier whose ``classify(texts)`` result has ``probs`` (N, K)."""

    def classify(self, texts: list[str]) -> Any: ...


class STRIP:
    """Perturbation-entropy detector around a victim classifier."""

    def __init__(
        self,
        victim: ProbClassifier,
        clean_texts: Sequence[str],
        *,
        copies: int = 20,
        replace_ratio: float = 0.25,
        seed: int = 0,
        progress: bool = False,
    ) -> None:
        self.victim = victim
        self.pool = [w for text in clean_texts for w in str(text).split()]
        if not self.pool:
            raise InputError("STRIP needs held-out clean texts to draw replacement words from")
        if copies < 1 or not 0 < replace_ratio <= 1:
            raise InputError("STRIP needs copies >= 1 and replace_ratio in (0, 1]")
        self.copies = copies
        self.replace_ratio = replace_ratio
        self.seed = seed
        self.progress = progress
        self.threshold_: float | None = None

    def perturb(self, text: str, rng: random.Random) -> str:
        words = text.split() or [rng.choice(self.pool)]
        count = max(1, round(self.replace_ratio * len(words)))
        for index in rng.sample(range(len(words)), min(count, len(words))):
            words[index] = rng.choice(self.pool)
        return " ".join(words)

    def entropy(self, texts: Sequence[str]) -> list[float]:
        """Mean prediction entropy over ``copies`` perturbed copies of each text."""
        rng = random.Random(self.seed)
        out = []
        for text in tqdm(texts, desc="STRIP", disable=not self.progress, unit="text"):
            probs = self.victim.classify([self.perturb(str(text), rng) for _ in range(self.copies)]).probs
            probs = torch.as_tensor(probs).float().clamp_min(1e-12)
            out.append(float(-(probs * probs.log()).sum(-1).mean()) / math.log(probs.shape[-1]))
        return out

    def score(self, texts: Sequence[str]) -> list[float]:
        """Poison score: ``1 - normalised entropy`` (higher = more likely poisoned)."""
        return [1.0 - e for e in self.entropy(texts)]

    def calibrate(self, clean_texts: Sequence[str], target_frr: float = 0.05) -> STRIP:
        self.threshold_ = calibrate_threshold(self.score(clean_texts), target_frr)
        return self

    def flag(self, texts: Sequence[str]) -> list[bool]:
        if self.threshold_ is None:
            raise InputError("STRIP has no threshold: call calibrate(clean_texts, target_frr) first")
        return flag_scores(self.score(texts), self.threshold_)
