"""PSIM: poisoned-sample identification with a PEFT module trained on random labels (Zhao et al. 2024)."""

from lmshield.defenses.psim.config import PSIMConfig, auto_learning_rate
from lmshield.defenses.psim.detector import PSIM, Calibration, PSIMScores
from lmshield.defenses.psim.shield import ShieldedClassifier, ShieldReport
from lmshield.defenses.psim.thresholds import (
    RELEASE_THRESHOLD,
    calibrate_threshold,
    default_threshold,
    flag_scores,
    normalise,
)
from lmshield.defenses.psim.training import random_labels, train_random_label_module

__all__ = [
    "PSIM",
    "RELEASE_THRESHOLD",
    "Calibration",
    "PSIMConfig",
    "PSIMScores",
    "ShieldReport",
    "ShieldedClassifier",
    "auto_learning_rate",
    "calibrate_threshold",
    "default_threshold",
    "flag_scores",
    "normalise",
    "random_labels",
    "train_random_label_module",
]
