from __future__ import annotations

import math

import pytest

from lmshield.evaluation.detection import (
    Confusion,
    accuracy,
    confusion,
    detection_metrics,
    false_negative_rate,
    false_positive_rate,
    roc_auc,
    roc_curve,
    wilson_interval,
)

# 4 backdoored (True) and 3 clean models; two mistakes: one missed backdoor, one false alarm.
TRUTH = [True, True, True, True, False, False, False]
PREDICTED = [True, True, True, False, True, False, False]
SCORES = [9.0, 7.0, 4.0, 1.0, 4.0, 2.0, 0.5]


def test_confusion_and_rates():
    assert confusion(TRUTH, PREDICTED) == Confusion(tp=3, fp=1, tn=2, fn=1)
    assert accuracy(TRUTH, PREDICTED) == pytest.approx(5 / 7)
    assert false_positive_rate(TRUTH, PREDICTED) == pytest.approx(1 / 3)
    assert false_negative_rate(TRUTH, PREDICTED) == pytest.approx(1 / 4)


def test_roc_auc_counts_pairs_with_half_ties():
    # pairs (pos, neg): 9 and 7 beat all 3; 4 beats 2 and 0.5 and ties 4; 1 beats 0.5 only
    assert roc_auc(TRUTH, SCORES) == pytest.approx((3 + 3 + 2.5 + 1) / 12)
    assert roc_auc([True, False], [1.0, 0.0]) == 1.0
    assert roc_auc([True, False], [0.0, 1.0]) == 0.0
    assert math.isnan(roc_auc([True, True], [1.0, 2.0]))
    assert math.isnan(roc_auc([True, False], [math.nan, 0.0]))  # a NaN score ranks nowhere


def test_roc_curve_moves_tied_scores_together():
    fpr, tpr, thresholds = roc_curve(TRUTH, SCORES)
    assert thresholds == [math.inf, 9.0, 7.0, 4.0, 2.0, 1.0, 0.5]
    assert tpr == pytest.approx([0, 0.25, 0.5, 0.75, 0.75, 1.0, 1.0])
    assert fpr == pytest.approx([0, 0, 0, 1 / 3, 2 / 3, 2 / 3, 1.0])


def test_detection_metrics_and_empty_classes():
    metrics = detection_metrics(TRUTH, PREDICTED, SCORES, [3.0, 1.0, 2.0, 10.0, 4.0, 5.0, 6.0])
    assert (metrics.count, metrics.backdoored, metrics.clean) == (7, 4, 3)
    assert metrics.median_seconds == 4.0 and metrics.max_seconds == 10.0
    assert metrics.roc_auc == pytest.approx(9.5 / 12)
    only_backdoored = detection_metrics([True], [True], [1.0], [1.0])
    assert only_backdoored.accuracy == 1.0 and math.isnan(only_backdoored.fpr)
    with pytest.raises(ValueError):
        confusion([True], [True, False])


def test_class_counts_come_from_the_truth_not_the_verdicts():
    metrics = detection_metrics([True, False, False], [True, True, True], [3.0, 2.0, 1.0], [1.0, 1.0, 1.0])
    assert (metrics.count, metrics.backdoored, metrics.clean) == (3, 1, 2)


def test_wilson_interval_matches_hand_computed_values_and_stays_in_bounds():
    # 5 of 10: centre 0.5, half-width 1.96 * sqrt(0.025 + 0.0096) / 1.38416
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    low, high = wilson_interval(0, 10)  # a share of 0 still has an upper end: 3.8416 / 13.8416
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((1 - 0.2775, 1.0), abs=1e-4)
    narrow, wide = wilson_interval(54, 909), wilson_interval(9, 151)  # the same share, six times the inputs
    assert narrow[1] - narrow[0] < (wide[1] - wide[0]) / 2
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    with pytest.raises(ValueError):
        wilson_interval(3, 2)
