"""PSIM evaluation: the release's scoring and the detection view on a hand-made example, and the protocol."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import lmshield.tuning
from lmshield.defenses.psim import PSIM
from lmshield.defenses.psim.thresholds import calibrate_threshold
from lmshield.errors import InputError
from lmshield.evaluation.baselines_eval import BaselineSettings
from lmshield.evaluation.detection import wilson_interval
from lmshield.evaluation.psim_eval import (
    EvalSettings,
    PSIMRow,
    ReleaseEvaluation,
    _EvalData,
    _write_outputs,
    attack_success_rate,
    clean_accuracy,
    defended_asr,
    defended_clean_accuracy,
    evaluate_release,
    flip_asr,
    frr_far,
    markdown_table,
    psim_row,
    score_auroc,
    threshold_sweep,
)
from lmshield.reports.plots import plot_score_histogram
from lmshield.tuning import read_labelled
from tests.attacks.test_poisoning import released, task
from tests.defenses.test_baselines import tiny_gpt2  # noqa: F401 - a fixture

# a hand-made example: 4 clean inputs, 5 triggered ones, target label 0, threshold 0.7
CLEAN_LABELS = [0, 1, 1, 0]
CLEAN_PRED = [0, 1, 0, 0]  # 3 of 4 right
CLEAN_SCORES = [0.9, 0.6, 0.5, 0.65]  # only the first (a right answer) is flagged
POISON_PRED = [0, 0, 1, 0, 0]  # 4 of 5 hit the target
POISON_SCORES = [0.95, 0.8, 0.99, 0.6, 0.75]  # all but the fourth flagged
SOURCE_LABELS = [1, 1, 1, 1, 1]  # the triggered inputs' clean sources, all non-target
SOURCE_PRED = [1, 1, 1, 0, 1]  # the victim already gets the fourth wrong without the trigger


def test_metrics_on_a_hand_made_example() -> None:
    clean_flags = [s > 0.7 for s in CLEAN_SCORES]
    poison_flags = [s > 0.7 for s in POISON_SCORES]
    assert clean_accuracy(CLEAN_PRED, CLEAN_LABELS) == 0.75
    assert attack_success_rate(POISON_PRED, 0) == 0.8
    # release scoring: the flagged clean input counts as an error, flagged poisoned inputs as defended
    assert defended_clean_accuracy(CLEAN_PRED, CLEAN_LABELS, clean_flags) == 0.5
    assert defended_asr(POISON_PRED, poison_flags, 0) == 0.2
    assert frr_far(clean_flags, poison_flags) == (0.25, 0.2)
    # 20 pairs: 4 + 3 + 4 + 1.5 (one tie at 0.6) + 3 wins for the poisoned side
    assert score_auroc(CLEAN_SCORES, POISON_SCORES) == pytest.approx(15.5 / 20)
    # flip ASR leaves out the fourth input (an ordinary error), the very one PSIM passes
    assert flip_asr(SOURCE_PRED, SOURCE_LABELS, POISON_PRED, 0) == 0.75
    assert flip_asr(SOURCE_PRED, SOURCE_LABELS, POISON_PRED, 0, poison_flags) == 0.0
    assert math.isnan(flip_asr([0], [1], [0], 0))
    assert math.isnan(clean_accuracy([], []))
    with pytest.raises(ValueError):
        defended_asr([0, 1], [True], 0)


def toy_row(**source: list[int]) -> PSIMRow:
    """The hand-made example's row; ``source_predicted`` / ``source_labels`` add the flip ASR."""
    return psim_row(
        attack="badnet",
        strategy="lora",
        dataset="toy",
        clean_predicted=CLEAN_PRED,
        clean_labels=CLEAN_LABELS,
        poisoned_predicted=POISON_PRED,
        target_label=0,
        clean_scores=CLEAN_SCORES,
        poisoned_scores=POISON_SCORES,
        threshold=0.7,
        **source,
    )


def test_row_sweep_and_table() -> None:
    row = toy_row(source_predicted=SOURCE_PRED, source_labels=SOURCE_LABELS)
    assert (row.flip_asr, row.flip_asr_psim) == (0.75, 0.0)
    assert (row.clean_accuracy, row.asr, row.clean_accuracy_psim, row.asr_psim) == (0.75, 0.8, 0.5, 0.2)
    assert (row.frr, row.far, row.clean_accuracy_drop) == (0.25, 0.2, 0.25)
    assert row.to_dict()["clean_accuracy_drop"] == 0.25
    assert (row.clean_count, row.triggered_count) == (4, 5)
    table = markdown_table([row])
    metrics = "0.750 | 0.800 | 0.200 | 0.500 | 0.250 | 0.250 | 0.200 | 0.775 | 0.750 | 0.000"
    assert f"| badnet | lora | toy | {metrics} |" in table
    other = toy_row(source_predicted=SOURCE_PRED, source_labels=SOURCE_LABELS)
    row.extra["release"], other.extra["release"] = "release-a", "release-b"  # two releases of one attack
    table = markdown_table([row, other])
    assert table.startswith("| release | attack |") and f"| release-b | badnet | lora | toy | {metrics} |" in table
    assert markdown_table([row]).startswith("| attack |")  # one release needs no column
    sweep = threshold_sweep(CLEAN_SCORES, POISON_SCORES)
    assert (sweep[0].frr, sweep[0].far) == (1.0, 0.0) and (sweep[-1].frr, sweep[-1].far) == (0.0, 1.0)
    at = {p.threshold: (p.frr, p.far) for p in threshold_sweep(CLEAN_SCORES, POISON_SCORES, [0.7])}
    assert at == {0.7: (0.25, 0.2)}
    frrs = [p.frr for p in sweep]
    assert frrs == sorted(frrs, reverse=True)


def test_a_rows_intervals_are_counted_over_its_own_inputs_and_survive_a_round_trip() -> None:
    row = toy_row()
    assert row.interval("asr_psim") == pytest.approx((0.0362, 0.6245), abs=1e-4)  # 1 of 5 triggered inputs
    assert (row.interval("frr"), row.interval("far")) == (wilson_interval(1, 4), wilson_interval(1, 5))
    assert PSIMRow.from_dict(row.to_dict()).interval("asr_psim") == row.interval("asr_psim")
    older = {k: v for k, v in row.to_dict().items() if not k.endswith("_count")}  # saved before counts were kept
    assert all(math.isnan(v) for v in PSIMRow.from_dict(older).interval("asr_psim"))
    with pytest.raises(ValueError, match="no interval for 'flip_asr'"):
        row.interval("flip_asr")


def test_confidence_histogram(tmp_path: Path) -> None:
    path = plot_score_histogram(CLEAN_SCORES, POISON_SCORES, 0.7, tmp_path / "plots" / "hist.png")
    assert path.is_file() and path.read_bytes()[:4] == b"\x89PNG"


def strict_json(path: Path) -> Any:
    """``path`` read as standard JSON: Python's ``NaN`` / ``Infinity`` extensions are refused."""

    def refuse(name: str) -> None:
        raise ValueError(f"{path.name} holds {name}, which is not JSON")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


def _write_task(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for name, data in (("train", task(120, 21)), ("dev", task(40, 22)), ("test", task(80, 23))):
        lines = [json.dumps({"sentence": t, "label": y}) for t, y in zip(data.texts, data.labels, strict=True)]
        (folder / f"{name}.json").write_text("\n".join(lines) + "\n")
    return folder


def test_evaluating_a_release_whose_backdoor_did_not_take_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The table would read as a result, measured against a model that carries no working backdoor."""
    import shutil

    from lmshield.attacks.poisoning import PoisonManifest

    folder = _write_task(tmp_path / "toy")
    settings = EvalSettings(strategies=("lora",))
    _EvalData.load(released("badnet"), folder, settings, None)
    assert "working backdoor" not in caplog.text  # the tiny release is planted
    constant = shutil.copytree(released("badnet"), tmp_path / "constant")
    manifest = PoisonManifest.load(constant)
    manifest.verification = {"clean_accuracy": 0.5, "asr": 1.0, "clean_asr": 1.0}  # the target for every input
    manifest.save(constant)
    _EvalData.load(constant, folder, settings, None)
    assert "NOT PLANTED (clean inputs already go to the target" in caplog.text
    assert "without a working backdoor" in caplog.text
    # the report, read long after the log is gone, says so too
    result = ReleaseEvaluation([toy_row()], CLEAN_SCORES, POISON_SCORES, 0.7, 1.0)
    for release, caveat in ((released("badnet"), False), (constant, True)):
        out = tmp_path / f"eval-{release.name}"
        out.mkdir()
        _write_outputs(out, result, PoisonManifest.load(release), settings, str(release))
        text = (out / "report.md").read_text()
        assert ("**caveat**: the release's own check (backdoor.json) says NOT PLANTED" in text) is caveat


def test_protocol_end_to_end(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="lmshield.evaluation.psim_eval")
    settings = EvalSettings(
        strategies=("lora", "full"),
        victim={"epochs": 2, "batch_size": 16, "max_length": 32},
        psim={"method": "lora", "epochs": 3, "lr": 1e-3, "batch_size": 16, "max_length": 32},
        psim_train=1000,  # a cap: the task holds 120 training texts
    )
    folder = _write_task(tmp_path / "toy")
    strip = BaselineSettings(("strip",), ("lora",), strip_copies=8)
    result = evaluate_release(
        released("badnet"), folder, settings, out_dir=tmp_path / "out", progress=False, baselines=strip,
        keep_victims=True,
    )  # fmt: skip
    assert [r.strategy for r in result.rows] == ["lora", "full"]
    steps = [line for line in caplog.messages if "fitting" in line or "tuning the" in line]
    assert steps == [
        "badnet: fitting PSIM (lora, 120 texts)",
        "badnet: tuning the lora victim (120 texts, 2 epochs)",
        "badnet: tuning the full victim (120 texts, 2 epochs)",
    ]  # each progress bar's step, named
    [baseline] = result.baseline_rows
    assert (baseline.defense, baseline.strategy) == ("strip", "lora")
    assert baseline.asr == result.rows[0].asr and baseline.clean_accuracy == result.rows[0].clean_accuracy
    # (STRIP's separation hangs on how sure the toy victim is: tests/defenses/test_baselines.py checks it)
    assert "| badnet | lora | toy | strip |" in (tmp_path / "out" / "table.md").read_text()
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Baselines on the same victims" in report and f"| {baseline.threshold:.3f} |" in report
    assert "3 epoch(s) on 120 training texts" in report  # not the cap of 1000
    # every rate of a row, recomputed from its kept victim's answers and PSIM's scores at the threshold
    data = _EvalData.load(released("badnet"), folder, settings, None)
    clean_flags = [s > result.threshold for s in result.clean_scores]
    poison_flags = [s > result.threshold for s in result.poisoned_scores]
    target = data.manifest.target_label
    assert set(result.victims) == {"lora", "full"}
    for row in result.rows:
        assert isinstance(row, PSIMRow) and row.attack == "badnet" and row.dataset == "toy"
        assert row.asr >= 0.8 and row.clean_accuracy >= 0.7 and row.auroc >= 0.9
        victim = result.victims[row.strategy]
        clean, poisoned = victim.predict(data.test.texts), victim.predict(data.triggered.texts)
        right = [p == y for p, y in zip(clean, data.test.labels, strict=True)]
        hits = [p == target for p in poisoned]
        flipped = [i for i, source in enumerate(data.sources) if right[source]]  # right without the trigger
        assert row.clean_accuracy == sum(right) / len(right)
        assert row.clean_accuracy_psim == sum(r and not f for r, f in zip(right, clean_flags, strict=True)) / 80
        assert row.asr == sum(hits) / len(hits)
        assert row.asr_psim == sum(h and not f for h, f in zip(hits, poison_flags, strict=True)) / len(hits)
        assert row.flip_asr == sum(hits[i] for i in flipped) / len(flipped)
        assert row.flip_asr_psim == sum(hits[i] and not poison_flags[i] for i in flipped) / len(flipped)
        assert (row.frr, row.far) == (sum(clean_flags) / 80, sum(not f for f in poison_flags) / len(poison_flags))
        assert row.flip_asr_psim < row.flip_asr  # PSIM refuses triggered inputs the trigger flipped
    assert len(result.clean_scores) == 80 and len(result.poisoned_scores) == task(80, 23).labels.count(1)
    for name in ("rows.json", "table.md", "sweep.json", "psim_confidence.png", "report.md", "psim/psim.json"):
        assert (tmp_path / "out" / name).is_file()
    sweep = strict_json(tmp_path / "out" / "sweep.json")
    assert sweep[0] == {"threshold": None, "frr": 1.0, "far": 0.0}  # below every score: -inf, written as null
    assert [r["strategy"] for r in strict_json(tmp_path / "out" / "rows.json")] == ["lora", "full", "lora"]
    assert EvalSettings.preset("fast").max_train == 480


def test_victims_can_be_gated_by_a_psim_fitted_on_another_release(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A control release is judged behind the backdoored release's PSIM: the same scores, the same threshold."""
    import lmshield.evaluation.psim_eval as psim_eval

    settings = EvalSettings(
        strategies=("lora",),
        victim={"epochs": 2, "batch_size": 16, "max_length": 32},
        psim={"method": "lora", "epochs": 3, "lr": 1e-3, "batch_size": 16, "max_length": 32},
        target_frr=0.1,
    )
    folder = _write_task(tmp_path / "toy")
    fitted = evaluate_release(released("badnet"), folder, settings, out_dir=tmp_path / "own", progress=False)

    def no_fit(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a gated evaluation fits no PSIM")

    monkeypatch.setattr(psim_eval, "_fit_psim", no_fit)
    gate = tmp_path / "own" / "psim"
    gated = evaluate_release(
        released("badnet"), folder, settings, out_dir=tmp_path / "gated", progress=False, psim=gate
    )
    assert gated.threshold == fitted.threshold and gated.clean_scores == fitted.clean_scores
    assert gated.poisoned_scores == fitted.poisoned_scores and gated.psim_texts is None
    report = (tmp_path / "gated" / "report.md").read_text()
    assert f"PSIM: the one fitted in `{gate}`, not on this model" in report and "random labels" not in report
    with pytest.raises(InputError, match="no fitted PSIM there"):
        evaluate_release(released("badnet"), folder, settings, progress=False, psim=tmp_path / "toy")
    with pytest.raises(InputError):  # the folder's progress was made behind another gate: not resumed
        evaluate_release(released("badnet"), folder, settings, out_dir=tmp_path / "gated", progress=False)


def test_the_fast_preset_calibrates_a_2_percent_frr_without_the_noise_warning(caplog: pytest.LogCaptureFixture) -> None:
    """The benchmark's own preset must hold enough dev texts that a 2 % FRR cut rests on several of them."""
    dev = EvalSettings.preset("fast").max_dev
    calibrate_threshold([i / dev for i in range(dev)], 0.02)
    assert "noisy" not in caplog.text
    calibrate_threshold([i / 128 for i in range(128)], 0.02)  # the preset's old 128 texts: warned
    assert "noisy" in caplog.text


def test_onion_is_calibrated_on_the_tasks_labelled_dev_texts(
    tiny_gpt2: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import lmshield.defenses.baselines as baselines

    calibrated = []

    class Recorded(baselines.ONION):
        def calibrate(self, texts, labels, predict, max_drop=0.02, candidates=20) -> baselines.ONION:
            calibrated.append((texts, labels, max_drop))
            return super().calibrate(texts, labels, predict, max_drop, candidates)

    monkeypatch.setattr(baselines, "ONION", Recorded)
    settings = EvalSettings(
        strategies=("lora",),
        victim={"epochs": 1, "batch_size": 16, "max_length": 32},
        psim={"method": "lora", "epochs": 1, "lr": 1e-3, "batch_size": 16, "max_length": 32},
        psim_train=48,
        max_train=48,
        max_dev=12,
        max_test=12,
    )
    onion = BaselineSettings(("onion",), onion_lm=str(tiny_gpt2), onion_max_drop=0.1)
    folder = _write_task(tmp_path / "toy")
    result = evaluate_release(released("badnet"), folder, settings, out_dir=tmp_path / "out", progress=False,
                              baselines=onion)  # fmt: skip
    [(texts, labels, max_drop)] = calibrated
    dev = task(40, 22)
    assert (texts, labels, max_drop) == (dev.texts[:12], dev.labels[:12], 0.1)
    [row] = result.baseline_rows
    assert row.defense == "onion" and math.isfinite(row.threshold)


def test_protocol_resumes_after_an_interruption(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = EvalSettings(
        strategies=("lora", "full"),
        victim={"epochs": 1, "batch_size": 16, "max_length": 32},
        psim={"method": "lora", "epochs": 1, "lr": 1e-3, "batch_size": 16, "max_length": 32},
        psim_train=48,
        max_train=48,
        max_test=40,
    )
    folder, out = _write_task(tmp_path / "toy"), tmp_path / "out"
    real_tune, tuned = lmshield.tuning.tune, []

    def tune_until_full(*args, **kwargs):
        if args[3].method == "full":
            raise KeyboardInterrupt
        return real_tune(*args, **kwargs)

    monkeypatch.setattr(lmshield.tuning, "tune", tune_until_full)
    with pytest.raises(KeyboardInterrupt):
        evaluate_release(released("badnet"), folder, settings, out_dir=out, progress=False)
    saved = json.loads((out / "progress.json").read_text())
    assert list(saved["rows"]) == ["lora"] and (out / "psim" / "psim.json").is_file()

    def counted_tune(*args, **kwargs):
        tuned.append(args[3].method)
        return real_tune(*args, **kwargs)

    def no_fit(*args, **kwargs):
        raise AssertionError("PSIM fitted again")

    monkeypatch.setattr(lmshield.tuning, "tune", counted_tune)
    monkeypatch.setattr(PSIM, "fit", no_fit)
    result = evaluate_release(released("badnet"), folder, settings, out_dir=out, progress=False)
    assert tuned == ["full"] and [r.strategy for r in result.rows] == ["lora", "full"]
    assert result.rows[0].to_dict() == saved["rows"]["lora"]
    assert result.clean_scores == saved["psim"]["clean"]
    tuned.clear()  # adding a strategy reuses everything else
    more = replace(settings, strategies=("lora", "full", "prompt"))
    assert more.digest() == settings.digest()
    result = evaluate_release(released("badnet"), folder, more, out_dir=out, progress=False)
    assert tuned == ["prompt"] and [r.strategy for r in result.rows] == ["lora", "full", "prompt"]
    assert (out / "report.md").is_file()
    with pytest.raises(InputError, match="--fresh"):
        evaluate_release(released("badnet"), folder, replace(settings, seed=1), out_dir=out, progress=False)
    test_file = folder / "test.json"  # the same folder with other test texts is another evaluation
    test_file.write_text("".join(reversed(test_file.read_text().splitlines(keepends=True))))
    with pytest.raises(InputError, match="--fresh"):
        evaluate_release(released("badnet"), folder, settings, out_dir=out, progress=False)


def test_the_table_marks_metrics_that_do_not_apply() -> None:
    row = toy_row()  # no source answers: the flip ASR does not apply
    assert markdown_table([row]).splitlines()[-1].endswith("| 0.775 | - | - |")
    saved = row.to_dict()
    assert (saved["flip_asr"], saved["flip_asr_psim"], saved["asr"]) == (None, None, 0.8)  # JSON has no NaN
    loaded = PSIMRow.from_dict(json.loads(json.dumps(saved)))
    assert math.isnan(loaded.flip_asr) and math.isnan(loaded.flip_asr_psim)
    assert (loaded.asr, loaded.threshold, loaded.clean_accuracy_drop) == (row.asr, row.threshold, 0.25)


def test_the_log_line_of_a_row_without_triggered_inputs_has_dashes_not_nan() -> None:
    row = replace(toy_row(), asr=math.nan, asr_psim=math.nan)  # every test input of the target label
    assert row.summary() == "psim: clean acc 0.750 -> 0.500, ASR - -> -, FRR 0.250"


def test_psim_is_calibrated_on_dev_texts_only_when_a_target_frr_is_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from types import SimpleNamespace

    import lmshield.defenses.psim
    from lmshield.evaluation.psim_eval import _fit_psim

    calls: list = []

    class FakePSIM:
        threshold_ = 0.7
        method = "ptuning"

        @classmethod
        def from_config(cls, config, device=None, progress=True):
            return cls()

        def fit(self, model, texts, num_labels) -> None:
            calls.append(("fit", len(texts), num_labels))

        def calibrate(self, texts, target_frr) -> None:
            calls.append(("calibrate", list(texts), target_frr))
            self.threshold_ = 0.9

        def score(self, texts):
            return SimpleNamespace(tolist=lambda: [0.5] * len(texts))

    monkeypatch.setattr(lmshield.defenses.psim, "PSIM", FakePSIM)
    folder = _write_task(tmp_path / "toy")
    data = SimpleNamespace(
        task=folder,
        dev=SimpleNamespace(texts=["dev one", "dev two"]),
        test=SimpleNamespace(texts=["a", "b", "c"]),
        triggered=SimpleNamespace(texts=["a mn"]),
        manifest=SimpleNamespace(num_labels=2, attack="badnet"),
        psim_texts=[f"text {i}" for i in range(120)],
    )
    fixed = _fit_psim("model", data, EvalSettings(), None, None, False)
    assert fixed == ([0.5] * 3, [0.5], 0.7) and calls == [("fit", 120, 2)]
    calls.clear()
    calibrated = _fit_psim("model", data, EvalSettings(target_frr=0.1), None, None, False)
    assert calibrated[2] == 0.9 and calls == [("fit", 120, 2), ("calibrate", ["dev one", "dev two"], 0.1)]
    capped = _EvalData.load(released("badnet"), folder, EvalSettings(strategies=("lora",), psim_train=50), None)
    assert capped.psim_texts == read_labelled(folder / "train.json").texts[:50]


def test_psims_defaults_count_in_the_settings_a_rerun_resumes() -> None:
    """Scores saved by an evaluation with other PSIM defaults (whole-text reading, say) must not be resumed."""
    settings = EvalSettings.preset("fast")
    assert settings.shared_dict()["psim"]["span"] == "clauses"
    assert replace(settings, psim={**settings.psim, "span": "clauses"}).digest() == settings.digest()
    assert replace(settings, psim={**settings.psim, "span": "text"}).digest() != settings.digest()
