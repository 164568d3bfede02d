"""PSIM in front of a victim classifier: the victim answers only the inputs PSIM lets through."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Protocol

from lmshield.defenses.psim.detector import PSIM

logger = logging.getLogger(__name__)


class Predictor(Protocol):
    """Anything that labels texts (a :class:`lmshield.tuning.TunedClassifier`, for one)."""

    def predict(self, texts: list[str]) -> list[int]: ...


@dataclass
class ShieldReport:
    """Per-text answers: the victim's label, or ``None`` where PSIM refused the input; PSIM's score and the view
    it was read on (the text, or one of its clauses)."""

    labels: list[int | None]
    scores: list[float]
    threshold: float
    refused: list[int] = field(default_factory=list)
    views: list[str] = field(default_factory=list)

    @property
    def accepted(self) -> list[int]:
        return [i for i, label in enumerate(self.labels) if label is not None]

    def summary(self) -> str:
        return (
            f"{len(self.labels)} inputs: {len(self.accepted)} answered, {len(self.refused)} refused as poisoned "
            f"(PSIM score > {self.threshold:.3f})"
        )


class ShieldedClassifier:
    """A victim behind PSIM: flagged inputs never reach the victim; they are refused and reported."""

    def __init__(self, psim: PSIM, victim: Predictor) -> None:
        self.psim = psim
        self.victim = victim

    def predict(self, texts: list[str]) -> ShieldReport:
        read = self.psim.scores(texts)
        scores = read.select(self.psim.score_kind)
        threshold = float(self.psim.threshold_)
        flagged = self.psim.flags(scores)
        refused = [i for i, f in enumerate(flagged) if f]
        accepted = [i for i, f in enumerate(flagged) if not f]
        labels: list[int | None] = [None] * len(texts)
        if accepted:
            answers = self.victim.predict([texts[i] for i in accepted])
            for index, label in zip(accepted, answers, strict=True):
                labels[index] = int(label)
        report = ShieldReport(labels, [float(s) for s in scores], threshold, refused, read.view)
        if refused:
            logger.debug(report.summary())  # the caller reports it (the CLI prints report.summary())
        return report
