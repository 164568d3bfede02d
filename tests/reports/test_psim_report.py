"""The PSIM report: the victims' table, the detection line and the sweep at fixed FRRs, from a hand-made example."""

from __future__ import annotations

from pathlib import Path

from lmshield.evaluation.psim_eval import psim_row, threshold_sweep
from lmshield.reports import write_psim_report
from lmshield.reports.psim_report import far_at_frr

CLEAN, POISONED = [0.9, 0.6, 0.5, 0.65], [0.95, 0.8, 0.99, 0.6, 0.75]
MANIFEST = {"attack": "badnet", "triggers": ["mn"], "target_label": 0, "label_mode": "clean", "poison_count": 3,
            "num_texts": 8}  # fmt: skip


def test_far_at_frr_takes_the_lowest_threshold_within_the_budget() -> None:
    sweep = threshold_sweep(CLEAN, POISONED)
    assert far_at_frr(sweep, 0.25) == (0.65, 0.2)  # flags 0.9 of the clean, passes only the 0.6 triggered
    assert far_at_frr(sweep, 0.0) == (0.9, 0.6)
    assert far_at_frr(sweep, -1.0) is None


def test_report_holds_the_rows_detection_and_sweep(tmp_path: Path) -> None:
    row = psim_row(
        attack="badnet", strategy="lora", dataset="toy", clean_predicted=[0, 1, 0, 0], clean_labels=[0, 1, 1, 0],
        poisoned_predicted=[0, 0, 1, 0, 0], target_label=0, clean_scores=CLEAN, poisoned_scores=POISONED,
        threshold=0.7, source_predicted=[1, 1, 1, 0, 1], source_labels=[1] * 5,
    )  # fmt: skip
    settings = {"psim": {"method": "lora"}, "target_frr": 0.02, "psim_train": 120}
    path = write_psim_report(
        tmp_path, rows=[row], sweep=threshold_sweep(CLEAN, POISONED), manifest=MANIFEST, settings=settings,
        threshold=0.7, model="runs/poison/badnet",
    )  # fmt: skip
    text = path.read_text()
    assert text.startswith("# lmshield PSIM evaluation: badnet on toy")
    assert "trigger mn, target label 0, clean-label, 3 of 8 texts" in text
    assert "lora, 1 epoch(s) on 120 training texts" in text and "calibrated to 2.0% FRR" in text
    assert "score: the highest of the input's and each clause's top probability" in text  # the default span
    assert "FRR **25.0%**" in text and "FAR **20.0%**" in text and "ROC-AUC **0.775**" in text
    assert "| lora | 0.750 | 0.800 | 0.200 | 0.500 | 0.250 | 0.750 | 0.000 | 0.036-0.624 |" in text  # 1 of 5
    assert "of 4 clean test inputs flagged (95% interval 4.6%-69.9%)" in text
    assert "| 2% | 0.9000 | 0.600 |" in text and "![PSIM confidence" in text
    assert "## Baselines" not in text  # no baseline rows, no section
    for psim, how in (({"threshold": 0.8}, "fixed by the settings"), ({}, "the release's cut")):
        settings = {"psim": psim, "target_frr": None}
        again = write_psim_report(
            tmp_path / "other", rows=[row], sweep=threshold_sweep(CLEAN, POISONED), manifest=MANIFEST,
            settings=settings, threshold=0.7, model="m",
        )  # fmt: skip
        assert f"threshold **0.7000** ({how}" in again.read_text()


def test_a_metric_that_does_not_apply_is_a_dash_in_the_report(tmp_path: Path) -> None:
    row = psim_row(
        attack="badnet",
        strategy="lora",
        dataset="toy",
        clean_predicted=[0, 1, 0, 0],
        clean_labels=[0, 1, 1, 0],
        poisoned_predicted=[0, 0, 1, 0, 0],
        target_label=0,
        clean_scores=CLEAN,
        poisoned_scores=POISONED,
        threshold=0.7,
    )  # no source answers: no flip ASR
    path = write_psim_report(
        tmp_path, rows=[row], sweep=threshold_sweep(CLEAN, POISONED), manifest=MANIFEST, settings={},
        threshold=0.7, model="m",
    )  # fmt: skip
    assert "| lora | 0.750 | 0.800 | 0.200 | 0.500 | 0.250 | - | - |" in path.read_text()


def test_an_uncalibrated_threshold_above_well_ranked_scores_is_pointed_out(tmp_path: Path) -> None:
    clean, poisoned = [0.55, 0.6, 0.58, 0.62], [0.66, 0.68, 0.65, 0.67, 0.69]  # ranked well, all under 0.7
    row = psim_row(
        attack="badnet", strategy="lora", dataset="toy", clean_predicted=[0, 1, 0, 0], clean_labels=[0, 1, 1, 0],
        poisoned_predicted=[0] * 5, target_label=0, clean_scores=clean, poisoned_scores=poisoned, threshold=0.7,
        source_predicted=[1] * 5, source_labels=[1] * 5,
    )  # fmt: skip
    common = {"rows": [row], "sweep": threshold_sweep(clean, poisoned), "manifest": MANIFEST, "threshold": 0.7}
    fixed = write_psim_report(tmp_path / "fixed", settings={"psim": {}}, model="m", **common).read_text()
    assert "the fixed threshold passes 100% of the triggered inputs" in fixed and "`--target-frr`" in fixed
    calibrated = write_psim_report(tmp_path / "cal", settings={"psim": {}, "target_frr": 0.02}, model="m", **common)
    assert "note:" not in calibrated.read_text()


def test_a_test_set_with_no_triggered_input_says_so_instead_of_printing_nan(tmp_path: Path) -> None:
    """Every test input of the target label: nothing to trigger, so FAR, ASR and ROC-AUC do not apply."""
    row = psim_row(
        attack="badnet", strategy="lora", dataset="toy", clean_predicted=[0, 0, 0, 0], clean_labels=[0, 0, 0, 0],
        poisoned_predicted=[], target_label=0, clean_scores=CLEAN, poisoned_scores=[], threshold=0.7,
        source_predicted=[], source_labels=[],
    )  # fmt: skip
    text = write_psim_report(
        tmp_path, rows=[row], sweep=threshold_sweep(CLEAN, []), manifest=MANIFEST, settings={}, threshold=0.7,
        model="m",
    ).read_text()  # fmt: skip
    assert "nan" not in text.lower()
    assert "FRR **25.0%**" in text and "FAR **-**" in text and "ROC-AUC **-**" in text
    assert "none was triggered" in text and "| 1% | 0.9000 | - |" in text


def test_a_control_release_is_named_as_the_baseline_it_is(tmp_path: Path) -> None:
    row = psim_row(
        attack="badnet", strategy="lora", dataset="toy", clean_predicted=[0, 1], clean_labels=[0, 1],
        poisoned_predicted=[1, 1], target_label=0, clean_scores=[0.5, 0.6], poisoned_scores=[0.5, 0.6], threshold=0.7,
    )  # fmt: skip
    settings = {"psim": {}, "target_frr": None}
    report = {"rows": [row], "sweep": [], "manifest": MANIFEST, "settings": settings, "threshold": 0.7, "model": "m"}
    control = write_psim_report(tmp_path / "c", **report, release_check="CONTROL (nothing poisoned)").read_text()
    assert "**control release**: nothing was poisoned" in control and "caveat" not in control
    planted = write_psim_report(tmp_path / "p", **report, release_check="planted").read_text()
    assert "control release" not in planted
