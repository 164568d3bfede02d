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

import numpy as np
import torch
from tqdm.auto import tqdm

from lmshield.defenses.psim.thresholds import calibrate_threshold, flag_scores
from lmshield.errors import InputError, check_finite, check_whole, reject_unknown_params
from lmshield.text.inputs import as_texts


class ProbClassifier(Protocol):
    """A classifier whose ``classify(texts)`` result has ``probs`` (N, K)."""

    def classify(self, texts: list[str]) -> Any: ...


class STRIP:
    """Perturbation-entropy detector around a victim classifier, with the scikit-learn feel.

    ``STRIP(victim).fit(clean_texts)`` keeps the words of held-out clean texts as the replacement pool
    (``pool_``); :meth:`calibrate` sets ``threshold_`` to a target FRR on other clean texts; :meth:`score`
    and :meth:`flag` return one value per text.
    """

    def __init__(
        self,
        victim: ProbClassifier,
        *,
        copies: int = 20,
        replace_ratio: float = 0.25,
        seed: int = 0,
        progress: bool = False,
    ) -> None:
        check_whole({"copies": copies})
        check_whole({"seed": seed}, minimum=0)
        check_finite({"replace_ratio": replace_ratio})
        if not 0 < replace_ratio <= 1:
            raise InputError(f"replace_ratio must be in (0, 1], got {replace_ratio}")
        self.victim = victim
        self.copies = copies
        self.replace_ratio = replace_ratio
        self.seed = seed
        self.progress = progress

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor's parameters (scikit-learn's estimator protocol)."""
        return {name: getattr(self, name) for name in ("victim", "copies", "replace_ratio", "seed", "progress")}

    def set_params(self, **params: Any) -> STRIP:
        """Change parameters (validated as in the constructor); calibrate again afterwards."""
        reject_unknown_params(self, params)
        checked = type(self)(**{**self.get_params(), **params})  # bad values fail here
        vars(self).update({name: getattr(checked, name) for name in params})
        return self

    def fit(self, clean_texts: Sequence[str]) -> STRIP:
        """Keep the words of held-out clean texts: perturbations draw their replacements from them."""
        pool = [w for text in as_texts(clean_texts, what="clean texts") for w in text.split()]
        if not pool:
            raise InputError("STRIP needs held-out clean texts to draw replacement words from")
        self.pool_ = pool
        self.threshold_: float | None = None
        return self

    def perturb(self, text: str, rng: random.Random) -> str:
        pool = self._check_fitted()
        words = text.split() or [rng.choice(pool)]
        count = max(1, round(self.replace_ratio * len(words)))
        for index in rng.sample(range(len(words)), min(count, len(words))):
            words[index] = rng.choice(pool)
        return " ".join(words)

    def entropy(self, texts: Sequence[str]) -> np.ndarray:
        """Mean prediction entropy over ``copies`` perturbed copies of each text (normalised to [0, 1]).

        Each text's perturbations are drawn from its own random stream (``seed`` and the text), so its score
        does not depend on the other texts scored with it.
        """
        self._check_fitted()
        out = []
        for text in tqdm(as_texts(texts), desc="STRIP", disable=not self.progress, unit="text"):
            rng = random.Random(f"{self.seed}:{text}")
            probs = self.victim.classify([self.perturb(text, rng) for _ in range(self.copies)]).probs
            probs = torch.as_tensor(probs).float().clamp_min(1e-12)
            out.append(float(-(probs * probs.log()).sum(-1).mean()) / math.log(probs.shape[-1]))
        return np.asarray(out, dtype=np.float64)

    def score(self, texts: Sequence[str]) -> np.ndarray:
        """Poison score: ``1 - normalised entropy`` (higher = more likely poisoned)."""
        return 1.0 - self.entropy(texts)

    def calibrate(self, clean_texts: Sequence[str], target_frr: float = 0.05) -> STRIP:
        self.threshold_ = calibrate_threshold(self.score(clean_texts).tolist(), target_frr)
        return self

    def flag(self, texts: Sequence[str]) -> np.ndarray:
        if getattr(self, "threshold_", None) is None:
            raise InputError("STRIP has no threshold: call calibrate(clean_texts, target_frr) first")
        return np.asarray(flag_scores(self.score(texts), self.threshold_), dtype=bool)

    def _check_fitted(self) -> list[str]:
        if not hasattr(self, "pool_"):
            raise InputError("STRIP is not fitted: call fit(clean_texts) first")
        return self.pool_
