"""Guard's estimator protocol: get_params / set_params, a threshold that is the monitor's, calibration files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lmshield.defenses.sanitizer.guard import Guard
from lmshield.errors import InputError
from lmshield.tuning import TunedClassifier, TuningConfig
from tests.tuning.helpers import tiny_task

PVS = torch.tensor([[1.0, -1.0] * 16, [-1.0, 1.0] * 16])


@pytest.fixture(scope="module")
def classifier(bert_pair) -> TunedClassifier:
    config = TuningConfig(method="lora", epochs=1, batch_size=16, max_length=32, lr=1e-3)
    return TunedClassifier.build(bert_pair[0], config, ["a", "b"])


def test_params_round_trip_and_a_new_threshold_takes_effect(classifier: TunedClassifier) -> None:
    guard = Guard(classifier, PVS[:, : classifier.hidden_size], max_removed=2)
    params = guard.get_params()
    assert params["threshold"] == 0.8 and params["max_removed"] == 2
    assert Guard(**params).get_params().keys() == params.keys()
    texts = tiny_task(20, 1).texts
    assert guard.set_params(threshold=0.0) is guard
    assert guard.threshold == 0.0 and guard.thresholds_.tolist() == [0.0, 0.0]
    flagged = guard.evaluate(texts)[1].flagged
    assert bool(flagged.all())  # every output shares more than 0 % of its signs with one of two opposite PVs
    with pytest.raises(InputError, match="max_removed must be at least 1"):
        guard.set_params(max_removed=0)
    assert guard.max_removed == 2  # a refused change leaves the guard as it was
    with pytest.raises(InputError, match="unknown Guard parameter"):
        guard.set_params(thresold=0.5)


def test_scikit_learn_clones_a_guard(classifier: TunedClassifier) -> None:
    base = pytest.importorskip("sklearn.base")  # not a dependency: checked where a user has it
    pvs = PVS[:, : classifier.hidden_size].half()  # the guard's own copy is float32: get_params gives what was passed
    guard = Guard(classifier, pvs, threshold=0.6, max_removed=3)
    copy = base.clone(guard)
    given = copy.get_params()["pvs"]  # clone deep-copies what is not an estimator
    assert copy is not guard and given.dtype == torch.float16 and torch.equal(given, pvs) and copy.max_removed == 3
    assert copy.threshold == 0.6 and copy.pvs.dtype == torch.float32


def test_a_calibration_is_kept_across_other_changes_and_loads_only_at_its_threshold(
    classifier: TunedClassifier, tmp_path: Path
) -> None:
    guard = Guard(classifier, PVS[:, : classifier.hidden_size], threshold=0.5)
    guard.calibrate(tiny_task(40, 3).texts, ceiling=0.99)
    raised = guard.thresholds_.clone()
    assert bool((raised > 0.5).any())  # opposite PVs: clean outputs share half or more signs with one of them
    guard.set_params(batch_size=8)
    assert torch.equal(guard.thresholds_, raised)
    path = guard.save_calibration(tmp_path / "calibration.safetensors")
    other = Guard(classifier, guard.pvs, threshold=0.6)
    with pytest.raises(InputError, match=r"calibrated at threshold 0\.5, not this guard's 0\.6"):
        other.load_calibration(path)
    assert torch.equal(Guard(classifier, guard.pvs, threshold=0.5).load_calibration(path).thresholds_, raised)
    guard.set_params(threshold=0.7)
    assert guard.thresholds_.tolist() == pytest.approx([0.7, 0.7])  # calibrated for 0.5: calibrate again


@pytest.mark.parametrize(
    ("mode", "seeds", "warning"),
    [("detect", 24, "detect mode"), ("search", 24, None), ("search", 8, "searched 8 seeds")],
)
def test_a_guard_built_on_a_scan_that_may_miss_triggers_says_so(
    classifier: TunedClassifier, mode: str, seeds: int, warning: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    """A fast search scan (8 seeds) let a trigger through a guard with no word of warning."""
    from lmshield.defenses.sanitizer import SanitizerConfig, ScanResult

    pvs = PVS[:1, : classifier.hidden_size]
    scan = ScanResult(
        verdict="backdoored", score=9.0, pvs=pvs, triggers=torch.zeros(1, 7, classifier.hidden_size),
        nearest_tokens=[[["a"]] * 7], trace=[], config=SanitizerConfig(mode=mode, max_seeds=seeds),
        model={"fingerprint": classifier.base.fingerprint}, position=str(classifier.position), text_source="t",
        spread=1.0,
    )  # fmt: skip
    with caplog.at_level("WARNING"):
        Guard.from_scan(classifier, scan)
    assert (warning in caplog.text and "--max-seeds 24" in caplog.text) if warning else "--max-seeds" not in caplog.text


def test_nonsense_params_are_refused_at_construction(classifier: TunedClassifier) -> None:
    pvs = PVS[:, : classifier.hidden_size]
    nan_pvs = torch.full((1, classifier.hidden_size), float("nan"))
    for params, message in (
        ({"pvs": [[1.0] * classifier.hidden_size]}, r"PVs must be a \(K, hidden\) float tensor, got list"),
        ({"pvs": pvs.long()}, "PVs must be a .* float tensor, got a torch.int64 tensor"),
        ({"pvs": nan_pvs}, "PVs hold NaN or infinite values"),
        ({"pvs": pvs[0]}, r"PVs must be a \(K, hidden\) tensor, got shape"),
        ({"threshold": "0.8"}, "threshold must be a number, got '0.8'"),
        ({"threshold": float("nan")}, "threshold must be a finite number"),
        ({"max_removed": "x"}, "max_removed must be a whole number, got 'x'"),
        ({"max_removed": 0}, "max_removed must be at least 1"),
        ({"batch_size": 2.5}, "batch_size must be a whole number, got 2.5"),
        ({"purge": "no"}, "purge must be true or false, got 'no'"),
        ({"progress": 1}, "progress must be true or false, got 1"),
        ({"purge_strategy": ["batched"]}, "unknown purge strategy"),
    ):
        with pytest.raises(InputError, match=message):
            Guard(classifier, **{"pvs": pvs, **params})
        guard = Guard(classifier, pvs)
        with pytest.raises(InputError, match=message):
            guard.set_params(**params)
    with pytest.raises(InputError, match="classifier must be a TunedClassifier, got str"):
        Guard("clf-dir", pvs)


def test_calibration_settings_are_checked_before_the_pass_over_the_texts(classifier: TunedClassifier) -> None:
    guard = Guard(classifier, PVS[:, : classifier.hidden_size], threshold=0.5)
    texts = tiny_task(10, 3).texts
    for settings, message in (
        ({"margin": float("nan")}, "margin must be a finite number"),
        ({"margin": float("inf")}, "margin must be a finite number"),
        ({"margin": -0.1}, "margin must be >= 0"),
        ({"margin": "0.1"}, "margin must be a number"),
        ({"quantile": "0.9"}, "quantile must be a number"),
        ({"ceiling": None}, "ceiling must be a number"),
        ({"ceiling": 0.4}, r"ceiling must be in \[0\.5, 1\)"),
    ):
        with pytest.raises(InputError, match=message):
            guard.calibrate(texts, **settings)
    assert guard.monitor.num_raised == 0
    assert guard.calibrate(texts, margin=0.0, ceiling=0.99) is guard


def test_a_calibration_path_that_is_a_folder_or_under_a_file_is_an_input_error(
    classifier: TunedClassifier, tmp_path: Path
) -> None:
    guard = Guard(classifier, PVS[:, : classifier.hidden_size])
    with pytest.raises(InputError, match="a folder; give the calibration a file name"):
        guard.save_calibration(tmp_path)
    (tmp_path / "afile").write_text("x")
    for path in (tmp_path / "afile" / "x.safetensors", tmp_path / "afile" / "sub" / "x.safetensors"):
        with pytest.raises(InputError, match="afile is a file, not a folder"):
            guard.save_calibration(path)
    assert guard.save_calibration(tmp_path / "new" / "c.safetensors").is_file()
