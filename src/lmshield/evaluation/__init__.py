"""Evaluation: metrics and protocols that turn defenses' answers into numbers."""

from lmshield.evaluation.detection import (
    Confusion,
    DetectionMetrics,
    accuracy,
    confusion,
    detection_metrics,
    false_negative_rate,
    false_positive_rate,
    roc_auc,
    roc_curve,
)

__all__ = [
    "Confusion",
    "DetectionMetrics",
    "accuracy",
    "confusion",
    "detection_metrics",
    "false_negative_rate",
    "false_positive_rate",
    "roc_auc",
    "roc_curve",
]
