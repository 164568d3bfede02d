"""Detection metrics over a set of models: pure functions of truths, verdicts, scores and times.

Positive = backdoored. Rates whose denominator is empty are ``nan`` (e.g. FPR on a zoo with no clean model).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Confusion:
    """Counts of a binary detector: true/false positives and negatives."""

    tp: int
    fp: int
    tn: int
    fn: int

    @property
    def total(self) -> int:
        return self.tp + self.fp + self.tn + self.fn


def _ratio(num: int, den: int) -> float:
    return num / den if den else math.nan


def confusion(truth: Sequence[bool], predicted: Sequence[bool]) -> Confusion:
    """Confusion counts; ``truth[i]`` and ``predicted[i]`` are True for backdoored."""
    if len(truth) != len(predicted):
        raise ValueError(f"{len(truth)} truths but {len(predicted)} predictions")
    pairs = list(zip(map(bool, truth), map(bool, predicted), strict=True))
    return Confusion(
        tp=sum(t and p for t, p in pairs),
        fp=sum(p and not t for t, p in pairs),
        tn=sum(not t and not p for t, p in pairs),
        fn=sum(t and not p for t, p in pairs),
    )


def accuracy(truth: Sequence[bool], predicted: Sequence[bool]) -> float:
    c = confusion(truth, predicted)
    return _ratio(c.tp + c.tn, c.total)


def false_positive_rate(truth: Sequence[bool], predicted: Sequence[bool]) -> float:
    """Share of clean models called backdoored."""
    c = confusion(truth, predicted)
    return _ratio(c.fp, c.fp + c.tn)


def false_negative_rate(truth: Sequence[bool], predicted: Sequence[bool]) -> float:
    """Share of backdoored models called clean."""
    c = confusion(truth, predicted)
    return _ratio(c.fn, c.fn + c.tp)


def wilson_interval(successes: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of the share ``successes / total`` (95 % with the default ``z``): unlike the
    normal approximation it stays within [0, 1] and is not empty at a share of 0 or 1; ``(nan, nan)`` with
    no trials."""
    if not 0 <= successes <= total:
        raise ValueError(f"{successes} successes out of {total} trials")
    if total == 0:
        return math.nan, math.nan
    share = successes / total
    denominator = 1 + z * z / total
    centre = (share + z * z / (2 * total)) / denominator
    half = z * math.sqrt(share * (1 - share) / total + z * z / (4 * total * total)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def roc_curve(truth: Sequence[bool], scores: Sequence[float]) -> tuple[list[float], list[float], list[float]]:
    """ROC points ``(fpr, tpr, thresholds)``, from (0, 0) at threshold +inf down to (1, 1).

    A model is called backdoored when its score is >= the threshold; tied scores move together.
    """
    if len(truth) != len(scores):
        raise ValueError(f"{len(truth)} truths but {len(scores)} scores")
    positives = sum(map(bool, truth))
    negatives = len(truth) - positives
    fpr, tpr, thresholds = [0.0], [0.0], [math.inf]
    tp = fp = 0
    ranked = sorted(zip(scores, map(bool, truth), strict=True), key=lambda pair: -pair[0])
    for index, (score, label) in enumerate(ranked):
        tp += label
        fp += not label
        if index + 1 < len(ranked) and ranked[index + 1][0] == score:
            continue
        fpr.append(_ratio(fp, negatives))
        tpr.append(_ratio(tp, positives))
        thresholds.append(float(score))
    return fpr, tpr, thresholds


def roc_auc(truth: Sequence[bool], scores: Sequence[float]) -> float:
    """Area under the ROC curve: the chance a random backdoored model outscores a random clean one
    (ties count one half); ``nan`` without both classes."""
    if len(truth) != len(scores):
        raise ValueError(f"{len(truth)} truths but {len(scores)} scores")
    pos = [s for s, t in zip(scores, truth, strict=True) if t]
    neg = [s for s, t in zip(scores, truth, strict=True) if not t]
    if not pos or not neg or any(math.isnan(s) for s in scores):  # a NaN score ranks nowhere
        return math.nan
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


@dataclass(frozen=True)
class DetectionMetrics:
    """Headline numbers of a detector over a zoo."""

    count: int
    backdoored: int
    clean: int
    accuracy: float
    fpr: float
    fnr: float
    roc_auc: float
    median_seconds: float
    max_seconds: float
    confusion: Confusion

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"{self.count} models ({self.backdoored} backdoored, {self.clean} clean): accuracy {self.accuracy:.3f}, "
            f"FPR {self.fpr:.3f}, FNR {self.fnr:.3f}, ROC-AUC {self.roc_auc:.3f}, "
            f"time per model median {self.median_seconds:.1f} s, max {self.max_seconds:.1f} s"
        )


def detection_metrics(
    truth: Sequence[bool], predicted: Sequence[bool], scores: Sequence[float], seconds: Sequence[float]
) -> DetectionMetrics:
    """All headline metrics at once."""
    counts = confusion(truth, predicted)
    return DetectionMetrics(
        count=len(truth),
        backdoored=counts.tp + counts.fn,
        clean=counts.tn + counts.fp,
        accuracy=accuracy(truth, predicted),
        fpr=false_positive_rate(truth, predicted),
        fnr=false_negative_rate(truth, predicted),
        roc_auc=roc_auc(truth, scores),
        median_seconds=float(statistics.median(seconds)) if seconds else math.nan,
        max_seconds=float(max(seconds)) if seconds else math.nan,
        confusion=counts,
    )
