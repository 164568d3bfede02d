"""Thresholds on PSIM's confidence: the release's fixed value, and calibration to a target FRR."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

from lmshield.errors import InputError

logger = logging.getLogger(__name__)

RELEASE_THRESHOLD = 0.7  # the release's threshold on the top probability, binary tasks
RELEASE_NORMALISED = 0.4  # the same cut on the class-count-normalised scale: (0.7 - 1/2) / (1 - 1/2)
SCORE_KINDS = ("probability", "normalised")
STABLE_TAIL = 5  # clean texts above the cut for a threshold that does not hang on one or two of them


def normalise(p_max: float, num_labels: int) -> float:
    """``(p_max - 1/K) / (1 - 1/K)``: 0 at chance, 1 at full confidence, comparable across class counts."""
    chance = 1.0 / num_labels
    return (p_max - chance) / (1.0 - chance)


def default_threshold(num_labels: int, kind: str = "probability") -> float:
    """The release's 0.7 for binary tasks, carried to ``K`` classes on the normalised scale."""
    if kind == "normalised":
        return RELEASE_NORMALISED
    chance = 1.0 / num_labels
    return chance + RELEASE_NORMALISED * (1.0 - chance)


def rescale_threshold(threshold: float, num_labels: int, kind: str, new_kind: str) -> float:
    """``threshold`` on the ``kind`` scale, carried to the ``new_kind`` scale (it flags the same inputs)."""
    if kind == new_kind:
        return threshold
    chance = 1.0 / num_labels
    if new_kind == "normalised":
        return normalise(threshold, num_labels)
    return chance + threshold * (1.0 - chance)


def check_target_frr(target_frr: float) -> None:
    """A target false-rejection rate is a share below 1 (at 1 every clean input may be refused)."""
    if isinstance(target_frr, bool) or not isinstance(target_frr, int | float):
        raise InputError(f"target FRR must be a number in [0, 1), got {target_frr!r}")
    if not 0 <= target_frr < 1:  # NaN fails too
        raise InputError(f"target FRR must be in [0, 1), got {target_frr}")


def calibrate_threshold(clean_scores: Sequence[float], target_frr: float) -> float:
    """A threshold whose FRR (score > threshold) on new clean inputs is at most ``target_frr`` on average.

    With ``n`` clean scores, ``k = floor(target_frr * (n + 1)) - 1`` of them lie above the cut (the
    conformal rank): a new clean input, exchangeable with them, then lands above it with probability
    ``(k + 1) / (n + 1) <= target_frr``. (Letting ``floor(target_frr * n)`` above, as before, averaged 2.2 %
    FRR on fresh inputs for a 2 % target on 500 texts.) Ties at the cut are all passed. Warns when fewer
    than :data:`STABLE_TAIL` texts lie above the cut: the threshold then rests on one or two texts and the
    FRR on new inputs varies.
    """
    check_target_frr(target_frr)
    ordered = sorted(float(s) for s in clean_scores)
    if not ordered:
        raise InputError("calibration needs at least one held-out clean text")
    if any(math.isnan(s) for s in ordered):
        raise InputError("calibration scores hold NaN: a threshold between them would be arbitrary")
    allowed = max(0, math.floor(target_frr * (len(ordered) + 1) + 1e-9) - 1)
    if allowed < STABLE_TAIL:
        fix = (
            f"give at least {math.ceil(STABLE_TAIL / target_frr)} held-out texts"
            if target_frr > 0
            else "at target 0 it is the highest clean score seen"
        )
        logger.warning(
            "calibrating to %.1f%% FRR on %d texts lets %d of them above the cut: the threshold is noisy; %s",
            100 * target_frr, len(ordered), allowed, fix,
        )  # fmt: skip
    if allowed >= len(ordered):
        return math.nextafter(ordered[0], -math.inf)
    return ordered[len(ordered) - 1 - allowed]


def flag_scores(scores: Sequence[float], threshold: float) -> list[bool]:
    """Flag (as poisoned) every score strictly above the threshold, as the release does."""
    return [float(s) > threshold for s in scores]
