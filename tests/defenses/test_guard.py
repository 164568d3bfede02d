"""Guard: the monitor flags triggered inputs from the prediction's own forward pass; purging removes triggers."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from lmshield.attacks.vectors import DEFAULT_TRIGGERS
from lmshield.cli.main import app
from lmshield.defenses.sanitizer import ScanResult, scan
from lmshield.defenses.sanitizer.guard import Guard
from lmshield.defenses.sanitizer.monitor import Monitor, MonitorResult, calibration_size, sign_match
from lmshield.defenses.sanitizer.purge import purge, sequential_purge, word_deletions
from lmshield.errors import EXIT_ERROR, InputError
from lmshield.evaluation.guard_eval import evaluate_guard, triggered_copies
from lmshield.tuning import TunedClassifier, TuningConfig, tune
from tests.tiny_pairs import TINY_SCAN
from tests.tuning.helpers import tiny_task

runner = CliRunner()
FAST = TuningConfig(method="prefix", epochs=5, batch_size=16, max_length=32, lr=3e-2)


@pytest.fixture(scope="module")
def backdoored_classifier(bert_pair) -> TunedClassifier:
    """Prefix tuning (P-tuning v2, [CLS] head) on the tiny POR-backdoored BERT."""
    _, backdoored, _ = bert_pair
    return tune(backdoored, tiny_task(240, 1), tiny_task(90, 2), FAST, progress=False).classifier


@pytest.fixture(scope="module")
def guard(backdoored_classifier: TunedClassifier, bert_pair) -> Guard:
    return Guard(backdoored_classifier, bert_pair[2])


@pytest.fixture(scope="module")
def saved(backdoored_classifier: TunedClassifier, bert_pair, tmp_path_factory: pytest.TempPathFactory):
    """The classifier and a real scan of its encoder, on disk."""
    root = tmp_path_factory.mktemp("guarded")
    backdoored_classifier.save_pretrained(root / "classifier")
    result = scan(bert_pair[1], TINY_SCAN, progress=False, out_dir=root / "scan")
    return root / "classifier", root / "scan", result


def test_sign_match_is_the_share_of_equal_signs() -> None:
    gen = torch.Generator().manual_seed(0)
    outputs = torch.randn(7, 12, generator=gen)
    outputs[0, :3] = 0.0
    pvs = torch.sign(torch.randn(3, 12, generator=gen))
    naive = (torch.sign(outputs)[:, None] == torch.sign(pvs)[None]).float().mean(-1)
    assert torch.allclose(sign_match(outputs, pvs), naive)
    monitored = Monitor(pvs, threshold=0.5)(torch.cat([pvs[1:2] * 3, -pvs[1:2]]))
    assert monitored.flagged.tolist() == [True, False] and monitored.pv_index.tolist() == [1, -1]
    assert monitored.match[0] == 1.0
    with pytest.raises(InputError, match="dimensions"):
        sign_match(outputs, pvs[:, :5])


def _with_share(pv: torch.Tensor, share: float) -> torch.Tensor:
    """A vector whose signs agree with ``pv`` on ``share`` of the dimensions."""
    out = pv.clone()
    flips = round((1 - share) * len(pv))
    out[:flips] = -out[:flips]
    return out


def test_calibration_raises_only_the_thresholds_clean_outputs_reach() -> None:
    torch.manual_seed(0)
    pvs = torch.randn(2, 100).sign()
    clean = torch.stack([_with_share(pvs[0], 0.84), _with_share(pvs[1], 0.6), torch.randn(100)])
    triggered = torch.stack([_with_share(pvs[0], 0.95), _with_share(pvs[1], 0.85)])
    monitor = Monitor(pvs)
    assert monitor(clean).flagged.tolist() == [True, False, False]  # the paper's 0.8 flags a clean input
    calibrated = monitor.calibrated(clean, margin=0.01, quantile=1.0)
    assert calibrated.thresholds.tolist() == pytest.approx([0.85, 0.8])
    assert (monitor.num_raised, calibrated.num_raised) == (0, 1)
    assert calibrated(clean).flagged.tolist() == [False, False, False]
    assert calibrated(triggered).flagged.tolist() == [True, True]
    assert calibrated(triggered).pv_index.tolist() == [0, 1]
    with pytest.raises(InputError, match="at least one clean input"):
        monitor.calibrated(torch.empty(0, 100))
    many = torch.stack([_with_share(pvs[0], 0.6)] * 99 + [_with_share(pvs[0], 0.9)])
    assert monitor.calibrated(many, quantile=1.0, margin=0.01).thresholds[0] == pytest.approx(0.91)
    assert monitor.calibrated(many, quantile=0.95).thresholds[0] == pytest.approx(0.8)  # one outlier ignored
    with pytest.raises(InputError, match="quantile"):
        monitor.calibrated(many, quantile=0.0)


def test_calibration_ceiling_keeps_a_pv_that_clean_texts_reach_watching() -> None:
    torch.manual_seed(0)
    pvs = torch.randn(1, 100).sign()
    # 5 % of the clean texts fire the backdoor outright (a trigger-like subword in the task's own data)
    clean = torch.stack([_with_share(pvs[0], 0.6)] * 95 + [_with_share(pvs[0], 1.0)] * 5)
    monitor = Monitor(pvs)
    assert monitor.calibrated(clean, quantile=1.0, ceiling=0.999).thresholds[0] == pytest.approx(0.999)
    capped = monitor.calibrated(clean, quantile=1.0, ceiling=0.9)
    assert capped.thresholds[0] == pytest.approx(0.9)
    assert capped(torch.stack([_with_share(pvs[0], 0.95)])).flagged.tolist() == [True]
    assert monitor.calibrated(clean).thresholds[0] == pytest.approx(0.97)  # default quantile 0.999 -> ceiling
    with pytest.raises(InputError, match="ceiling"):
        monitor.calibrated(clean, ceiling=0.5)


def test_guard_calibration_keeps_triggered_inputs_flagged(
    backdoored_classifier: TunedClassifier, bert_pair, caplog: pytest.LogCaptureFixture
) -> None:
    # at a base threshold of 0.5 the tiny model's clean outputs reach the PVs: calibration has work to do
    pvs, clean = bert_pair[2], tiny_task(60, 6).texts
    guard = Guard(backdoored_classifier, pvs, threshold=0.5)
    test = tiny_task(30, 7).texts
    assert sum(p.flagged for p in guard.predict(test)) >= 20  # uncalibrated: most clean inputs flagged
    with caplog.at_level(logging.WARNING, logger="lmshield"):
        assert guard.calibrate(clean) is guard
    assert "give at least 1000" in caplog.text  # the default quantile 0.999 sets none of 60 texts aside
    watched = backdoored_classifier.classify(clean, 64).watched
    assert torch.equal(guard.thresholds_, Monitor(pvs, 0.5).calibrated(watched).thresholds)
    assert guard.monitor.num_raised >= 3 and guard.threshold == 0.5
    assert sum(p.flagged for p in guard.predict(test)) <= 2  # held-out clean inputs: at most a stray one or two
    assert all(p.flagged for p in guard.predict(triggered_copies(test, "mn", seed=3)))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lmshield"):
        Guard(backdoored_classifier, bert_pair[2]).calibrate(tiny_task(60, 6).texts, quantile=0.95)
    assert "give at least" not in caplog.text
    with pytest.raises(InputError, match="no clean texts given"):
        guard.calibrate([])


def test_a_saved_calibration_restores_the_thresholds(
    backdoored_classifier: TunedClassifier, bert_pair, tmp_path: Path
) -> None:
    pvs = bert_pair[2]
    guard = Guard(backdoored_classifier, pvs).calibrate(tiny_task(60, 6).texts, margin=0.3, quantile=1.0)
    assert bool((guard.thresholds_ > 0.8).any())  # the margin raises some PVs for the round trip to show
    path = guard.save_calibration(tmp_path / "calibration.safetensors")
    restored = Guard(backdoored_classifier, pvs).load_calibration(path)
    assert torch.equal(restored.thresholds_, guard.thresholds_)
    with pytest.raises(InputError, match="other PVs"):
        Guard(backdoored_classifier, pvs[:1]).load_calibration(path)
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 12)
    with pytest.raises(InputError, match="unreadable guard calibration"):
        Guard(backdoored_classifier, pvs).load_calibration(tmp_path / "junk.safetensors")


def test_a_calibration_that_is_a_pipe_is_refused(tmp_path: Path) -> None:
    """--calibrate x.safetensors naming a FIFO waited for a writer for good."""
    fifo = tmp_path / "fifo.safetensors"
    os.mkfifo(fifo)
    load = "import sys; from lmshield.defenses.sanitizer.guard import Guard; Guard.load_calibration(None, sys.argv[1])"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    run = subprocess.run([sys.executable, "-c", load, str(fifo)], capture_output=True, text=True, timeout=30, env=env)
    assert "is not a regular file" in run.stderr.splitlines()[-1]


def test_a_full_disk_keeps_the_calibration_saved_before(
    backdoored_classifier: TunedClassifier, bert_pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk that filled up while a calibration was saved destroyed the one saved before."""
    guard = Guard(backdoored_classifier, bert_pair[2])
    path = guard.save_calibration(tmp_path / "calibration.safetensors")
    saved = path.read_bytes()

    def disk_full(tensors: object, filename: str, metadata: object = None) -> None:
        Path(filename).write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("lmshield.defenses.sanitizer.guard.save_file", disk_full)
    with pytest.raises(InputError, match="No space left on device"):
        guard.save_calibration(path)
    assert path.read_bytes() == saved and [p.name for p in tmp_path.iterdir()] == [path.name]


def test_calibration_size_sets_one_text_aside() -> None:
    assert [calibration_size(q) for q in (0.5, 0.995, 0.999, 1.0)] == [2, 200, 1000, 1]


def test_triggered_inputs_are_flagged_and_purged(guard: Guard) -> None:
    texts = tiny_task(24, 3).texts
    clean = guard.predict(texts)
    assert sum(p.flagged for p in clean) <= 2  # clean inputs are rarely flagged
    for number, trigger in enumerate(DEFAULT_TRIGGERS):
        for prediction in guard.predict(triggered_copies(texts, trigger, seed=number)):
            assert prediction.flagged and prediction.status == "purged", prediction
            assert prediction.removed == (trigger,)
            assert trigger not in prediction.purged_text.split()
            assert prediction.final_label == prediction.purged_label is not None


def test_an_input_of_trigger_words_only_is_refused_not_answered_empty(guard: Guard) -> None:
    for prediction in guard.predict([DEFAULT_TRIGGERS[0], f"{DEFAULT_TRIGGERS[0]} {DEFAULT_TRIGGERS[0]}"]):
        assert prediction.flagged and prediction.status == "refused" and prediction.final_label is None


def test_purged_label_is_the_clean_label(guard: Guard) -> None:
    texts = tiny_task(24, 4).texts
    clean = [p.label for p in guard.predict(texts)]
    purged = [p.final_label for p in guard.predict(triggered_copies(texts, "cf", seed=1))]
    assert sum(a == b for a, b in zip(clean, purged, strict=True)) >= 0.9 * len(texts)


def test_monitoring_uses_the_prediction_forward_pass(guard: Guard, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    original = TunedClassifier.forward

    def counting(self: TunedClassifier, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        calls.append(len(input_ids))
        return original(self, input_ids, attention_mask)

    monkeypatch.setattr(TunedClassifier, "forward", counting)
    texts = tiny_task(10, 5).texts
    guard.predict(texts)
    assert calls == [10]  # one pass gives both the labels and the watched outputs
    calls.clear()
    triggered = triggered_copies(texts[:3], "mn", seed=0)
    guard.predict(triggered)
    candidates = sum(len(word_deletions(t)) for t in triggered)
    assert calls == [3, candidates]  # all single-word deletions of all flagged inputs in one batch


def _fake_evaluate(log: list[int]):
    """Flags texts holding 'aa' or 'bb'; closer to clearing when only one of them is left."""

    def evaluate(texts: list[str]) -> tuple[torch.Tensor, MonitorResult]:
        log.append(len(texts))
        words = [set(t.split()) for t in texts]
        hits = torch.tensor([len(w & {"aa", "bb"}) for w in words])
        match = torch.where(hits == 2, 0.95, torch.where(hits == 1, 0.85, 0.1))
        logits = torch.stack([torch.tensor([float(h), 1.0]) for h in hits])
        return logits, MonitorResult(match > 0.8, match, torch.where(match > 0.8, 0, -1))

    return evaluate


def test_purge_is_greedy_for_multi_word_triggers() -> None:
    log: list[int] = []
    texts = ["one aa two bb aa three", "plain bb words"]
    outcomes = purge(texts, _fake_evaluate(log), max_removed=3)
    assert outcomes[0].cleaned and outcomes[0].removed == ("aa", "bb") and outcomes[0].text == "one two three"
    assert outcomes[1].cleaned and outcomes[1].removed == ("bb",) and outcomes[1].text == "plain words"
    assert log == [5 + 3, 4]  # round 1: both inputs together; round 2: only the one still flagged
    refused = purge(texts[:1], _fake_evaluate([]), max_removed=1)[0]
    assert not refused.cleaned and refused.removed == ("aa",)
    assert word_deletions("a b a") == [("a", "b"), ("b", "a a")]
    assert word_deletions("mn mn") == [] and word_deletions("") == []  # nothing left is no purge
    assert purge([""], _fake_evaluate([]))[0].cleaned is False


def test_purge_tries_only_the_words_the_model_reads() -> None:
    text = "one aa two " + " ".join(f"w{i}" for i in range(5000))  # a long text: a forward pass per word
    assert [word for word, _ in word_deletions(text, reach=7)] == ["one", "aa"]  # "two" starts at 7
    reach = lambda texts: [7] * len(texts)  # noqa: E731 - the model reads 7 characters
    for strategy in (purge, sequential_purge):
        log: list[int] = []
        [outcome] = strategy([text], _fake_evaluate(log), 1, reach)
        assert outcome.cleaned and outcome.removed == ("aa",) and outcome.text.startswith("one two w0 w1")
        assert sum(log) <= 2  # it tried 5,003 deletions, 5,001 of them of words beyond the model's reach


def test_sequential_purge_costs_one_forward_per_word_up_to_the_trigger() -> None:
    log: list[int] = []
    outcomes = sequential_purge(["one two bb three", "aa bb"], _fake_evaluate(log))
    assert outcomes[0].cleaned and outcomes[0].removed == ("bb",) and outcomes[0].candidates == 3
    assert outcomes[0].text == "one two three"
    assert not outcomes[1].cleaned and outcomes[1].candidates == 2 and outcomes[1].logits is None
    assert log == [1, 1, 1, 1, 1]  # one text per forward pass


def test_guard_purge_strategies_agree_on_single_word_triggers(
    backdoored_classifier: TunedClassifier, bert_pair
) -> None:
    texts = triggered_copies(tiny_task(12, 4).texts, "cf", seed=2)
    batched = Guard(backdoored_classifier, bert_pair[2]).predict(texts)
    sequential = Guard(backdoored_classifier, bert_pair[2], purge_strategy="sequential").predict(texts)
    assert [p.final_label for p in batched] == [p.final_label for p in sequential]
    assert all(p.status == "purged" and p.removed == ("cf",) for p in sequential)
    with pytest.raises(InputError, match="purge strategy"):
        Guard(backdoored_classifier, bert_pair[2], purge_strategy="random")


def test_uncleanable_inputs_are_refused_not_passed(backdoored_classifier: TunedClassifier, bert_pair) -> None:
    strict = Guard(backdoored_classifier, bert_pair[2], purge=False)
    prediction = strict.predict(["the happy city cf was warm and bright near the river."])[0]
    assert prediction.flagged and prediction.status == "refused" and prediction.final_label is None
    assert prediction.to_dict()["status"] == "refused"


def test_the_threshold_decides_what_is_flagged_and_max_removed_bounds_the_purge(
    backdoored_classifier: TunedClassifier, bert_pair
) -> None:
    texts = tiny_task(12, 3).texts
    default = Guard(backdoored_classifier, bert_pair[2]).predict(texts)
    assert not any(p.flagged for p in default)
    lower = Guard(backdoored_classifier, bert_pair[2], threshold=0.5).predict(texts)
    assert [p.flagged for p in lower] == [p.match > 0.5 for p in default] and sum(p.flagged for p in lower) >= 6
    for max_removed in (1, 2):  # every share of matching signs is above 0: no deletion clears the monitor
        strict = Guard(backdoored_classifier, bert_pair[2], threshold=0.0, max_removed=max_removed)
        predictions = strict.predict(texts)
        assert all(p.flagged and p.status == "refused" for p in predictions)
        assert [len(p.removed) for p in predictions] == [max_removed] * len(texts)


def test_guard_eval_protocol_on_the_tiny_backdoor(guard: Guard) -> None:
    test = tiny_task(40, 6)
    report = evaluate_guard(guard, test.texts, test.labels, ["cf", "tq"], seed=0)
    assert report.false_positive_rate <= 0.1
    assert report.detection_rate == 1.0
    assert report.asr > 0.3 and report.guarded_asr <= 0.1
    assert report.guarded_clean_accuracy >= report.clean_accuracy - 0.1
    assert report.clean_accuracy > 0.5
    assert [t.trigger for t in report.triggers] == ["cf", "tq"]
    assert all(t.trigger_removal_rate == 1.0 for t in report.triggers)
    assert set(report.latency_ms) == {"classifier", "guard_clean", "guard_triggered"}
    assert "ASR+guard" in report.table()


def test_end_to_end_with_the_real_scanner(saved) -> None:
    classifier_dir, scan_dir, result = saved
    assert result.is_backdoored
    guard = Guard.from_pretrained(classifier_dir, scan_dir)
    texts = tiny_task(12, 7).texts
    # the scan stops at its first PV: find which planted trigger it recovered
    rates = {t: sum(p.flagged for p in guard.predict(triggered_copies(texts, t, seed=0))) for t in DEFAULT_TRIGGERS}
    trigger = max(rates, key=rates.get)
    assert rates[trigger] == len(texts)
    predictions = guard.predict(triggered_copies(texts, trigger, seed=1))
    assert all(p.status == "purged" and trigger in p.removed for p in predictions)
    assert sum(p.flagged for p in guard.predict(texts)) <= 1


def test_bad_inputs_give_clear_errors(backdoored_classifier: TunedClassifier, saved, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="hidden size"):
        Guard(backdoored_classifier, torch.ones(2, 7))
    with pytest.raises(InputError, match="threshold"):
        Guard(backdoored_classifier, torch.ones(1, 32), threshold=1.5)
    with pytest.raises(InputError, match="list of texts"):
        Guard(backdoored_classifier, torch.ones(1, 32)).predict("one string")
    scan_result = ScanResult.from_pretrained(saved[1])
    scan_result.position = "mask"
    with pytest.raises(InputError, match="watched position"):
        Guard.from_scan(backdoored_classifier, scan_result)
    with pytest.raises(InputError, match="not a scan result"):
        Guard.from_pretrained(saved[0], tmp_path)


def test_a_scan_of_other_weights_is_refused_unless_accepted(backdoored_classifier: TunedClassifier, saved) -> None:
    """Another model's PVs (or another model's clean verdict) would leave the guard blind."""
    scan_result = ScanResult.from_pretrained(saved[1])
    assert Guard.from_scan(backdoored_classifier, scan_result).monitor.num_pvs == scan_result.num_pvs
    for fingerprint, message in ((None, "records no model fingerprint"), ("0" * 64, "is of other weights")):
        scan_result.model["fingerprint"] = fingerprint
        with pytest.raises(InputError, match=f"{message}.*--any-scan"):
            Guard.from_scan(backdoored_classifier, scan_result)
        assert Guard.from_scan(backdoored_classifier, scan_result, any_scan=True).monitor.num_pvs >= 1
    scan_result.save_pretrained(saved[1].parent / "other-scan")
    texts = saved[1].parent / "texts.txt"
    texts.write_text("the happy city was warm.\n")
    refused = runner.invoke(app, ["predict", str(saved[0]), str(texts), "--scan", str(saved[1].parent / "other-scan")])
    assert refused.exit_code == 2 and "--any-scan" in refused.output
    accepted = runner.invoke(
        app, ["predict", str(saved[0]), str(texts), "--scan", str(saved[1].parent / "other-scan"), "--any-scan"]
    )
    assert accepted.exit_code == 0, accepted.output


def test_predict_cli_writes_json_lines(saved, tmp_path: Path) -> None:
    classifier_dir, scan_dir, _ = saved
    texts = tmp_path / "texts.txt"
    texts.write_text("the happy city was warm and bright.\nthe sad river cf was cold and dark.\n")
    out = tmp_path / "predictions.jsonl"
    result = runner.invoke(
        app, ["predict", str(classifier_dir), str(texts), "--scan", str(scan_dir), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 and {"status", "final_label", "probs", "removed", "purged_text"} <= set(rows[0])
    assert "unguarded_label" in rows[0] and "label" not in rows[0]  # a bare label read as the answer: maybe refused
    plain = runner.invoke(app, ["predict", str(classifier_dir), str(texts)])
    assert plain.exit_code == 0 and len(plain.output.strip().splitlines()) == 2
    for line in plain.output.strip().splitlines():  # the fields every mode shares
        row = json.loads(line)
        assert {"text", "final_label", "label_name"} <= set(row) and row["final_label"] == row["label"]
    missing = runner.invoke(app, ["predict", str(classifier_dir), str(tmp_path / "nope.txt")])
    assert missing.exit_code == EXIT_ERROR and "no such file" in missing.output


def test_predict_cli_hands_threshold_purge_and_max_removed_to_the_guard(saved, tmp_path: Path) -> None:
    classifier_dir, scan_dir, _ = saved
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(tiny_task(4, 7).texts) + "\n")

    def rows(*options: object) -> list[dict]:
        result = runner.invoke(app, ["predict", str(classifier_dir), str(texts), "--scan", str(scan_dir),
                                     *map(str, options)])  # fmt: skip
        assert result.exit_code == 0, result.output
        return [json.loads(line) for line in result.stdout.strip().splitlines()]

    assert [r["status"] for r in rows()] == ["clean"] * 4
    # above 0 every output is flagged and no deletion clears it: the purge deletes max_removed words, then refuses
    for options, removed in ((["--threshold", 0], 3), (["--threshold", 0, "--max-removed", 1], 1)):
        answers = rows(*options)
        assert all(r["flagged"] and r["status"] == "refused" and r["final_label"] is None for r in answers)
        assert [len(r["removed"]) for r in answers] == [removed] * 4
    unpurged = rows("--threshold", 0, "--no-purge")
    assert all(r["status"] == "refused" and r["removed"] == [] and r["purged_text"] is None for r in unpurged)
    assert all(r["label_name"] is None and r["unguarded_label_name"] is not None for r in unpurged)
    assert all(r["label_name"] == r["unguarded_label_name"] for r in rows())  # answered as classified


def test_guard_eval_cli(saved, tmp_path: Path) -> None:
    classifier_dir, scan_dir, _ = saved
    test = tmp_path / "test.jsonl"
    data = tiny_task(20, 8)
    test.write_text(
        "\n".join(json.dumps({"sentence": t, "label": y}) for t, y in zip(data.texts, data.labels, strict=True))
    )
    backdoor = tmp_path / "backdoor.json"
    backdoor.write_text(json.dumps({"triggers": list(DEFAULT_TRIGGERS[:2])}))
    args = ["guard", "eval", "--classifier", str(classifier_dir), "--scan", str(scan_dir), "--test", str(test)]
    result = runner.invoke(app, [*args, "--backdoor", str(backdoor), "--out", str(tmp_path / "report.json")])
    assert result.exit_code == 0, result.output
    assert "ASR+guard" in result.output
    assert json.loads((tmp_path / "report.json").read_text())["clean_inputs"] == 20
    quiet = runner.invoke(app, [*args, "--triggers", "cf", "--quiet"])
    assert quiet.exit_code == 0 and "%|" in result.output and "%|" not in quiet.output  # bars only without --quiet
    both = runner.invoke(app, [*args, "--backdoor", str(backdoor), "--triggers", "cf"])
    assert both.exit_code == EXIT_ERROR and "either" in both.output
    clean = tmp_path / "clean.txt"
    clean.write_text("\n".join(tiny_task(30, 9).texts))
    saved_calibration = tmp_path / "calibration.safetensors"
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    # at 0.5 the clean texts come close to the scan's PVs: calibration raises their thresholds
    settings = ["--triggers", "cf", "--threshold", "0.5", "--max-removed", "2"]
    calibrated = runner.invoke(app, [*args, *settings, "--calibrate", str(clean),
                                     "--save-calibration", str(saved_calibration), "--out", str(first)])  # fmt: skip
    assert calibrated.exit_code == 0, calibrated.output
    reused = runner.invoke(app, [*args, *settings, "--calibrate", str(saved_calibration), "--out", str(second)])
    assert reused.exit_code == 0, reused.output
    expected = Guard.from_pretrained(classifier_dir, scan_dir, threshold=0.5).calibrate(tiny_task(30, 9).texts)
    assert expected.monitor.num_raised >= 1
    on_disk = Guard.from_pretrained(classifier_dir, scan_dir, threshold=0.5).load_calibration(saved_calibration)
    assert torch.equal(on_disk.thresholds_, expected.thresholds_)
    reports = [json.loads(path.read_text()) for path in (first, second)]
    for report in reports:
        assert report["settings"]["thresholds"] == [round(float(t), 4) for t in expected.thresholds_]
        assert (report["settings"]["threshold"], report["settings"]["max_removed"]) == (0.5, 2)
    assert reports[0]["guarded_asr"] == reports[1]["guarded_asr"]
    missing = runner.invoke(app, [*args, "--triggers", "cf", "--calibrate", str(tmp_path / "none.txt")])
    assert missing.exit_code == EXIT_ERROR


def test_a_threshold_the_monitor_can_never_exceed_is_refused() -> None:
    pvs = torch.ones(1, 4)
    for bad in (1.0, float("nan"), -0.1):  # 1.0: no share of matching signs is above it; NaN: nothing compares
        with pytest.raises(InputError, match="threshold"):
            Monitor(pvs, threshold=bad)
    assert Monitor(pvs, threshold=0.0).threshold == 0.0


def test_a_calibration_that_would_switch_the_monitor_off_is_refused(
    backdoored_classifier: TunedClassifier, bert_pair, tmp_path: Path
) -> None:
    from safetensors.torch import save_file

    from lmshield.defenses.sanitizer.guard import CALIBRATION_FORMAT

    pvs = bert_pair[2].float()
    # never flags, never flags, below the base 0.8, above what calibration writes (0.97): as good as off
    for number, bad in enumerate((1.0, float("nan"), 0.5, 0.9999)):
        path = tmp_path / f"bad-{number}.safetensors"
        tensors = {"thresholds": torch.full((pvs.shape[0],), bad), "pvs": pvs.contiguous()}
        save_file(tensors, str(path), metadata={"format": CALIBRATION_FORMAT, "threshold": "0.8"})
        with pytest.raises(InputError, match="thresholds must lie"):
            Guard(backdoored_classifier, pvs).load_calibration(path)
    tensors = {"thresholds": torch.full((pvs.shape[0] + 1,), 0.9), "pvs": pvs.contiguous()}
    save_file(tensors, str(tmp_path / "shape.safetensors"), metadata={"format": CALIBRATION_FORMAT, "threshold": "0.8"})
    with pytest.raises(InputError, match=r"shape.safetensors: \(\d+,\) thresholds for \d+ PVs"):
        Guard(backdoored_classifier, pvs).load_calibration(tmp_path / "shape.safetensors")
    tensors["thresholds"] = torch.full((pvs.shape[0],), 0.97)  # the ceiling itself is what calibration may write
    save_file(tensors, str(tmp_path / "ok.safetensors"), metadata={"format": CALIBRATION_FORMAT, "threshold": "0.8"})
    assert Guard(backdoored_classifier, pvs).load_calibration(tmp_path / "ok.safetensors").monitor.num_raised >= 1


def test_the_reported_pv_is_one_that_fired() -> None:
    """With per-PV thresholds, the PV named is the one whose threshold the output passed, not the closest."""
    torch.manual_seed(0)
    pv = torch.randn(100).sign()
    output, other = pv.clone(), pv.clone()
    output[:10] = -output[:10]  # 0.90 with PV 0
    other[10:40] = -other[10:40]  # 0.60 with PV 1
    pvs = torch.stack([pv, other])
    monitor = Monitor(pvs, thresholds=torch.tensor([0.95, 0.5]))
    shares = sign_match(output[None], pvs)[0]
    assert shares[0] > shares[1] > 0.5, shares  # PV 0 is closer, but only PV 1 is passed
    monitored = monitor(output[None])
    assert monitored.flagged.tolist() == [True] and monitored.pv_index.tolist() == [1]
    with pytest.raises(InputError, match="per-PV thresholds"):
        Monitor(pvs, thresholds=torch.full((3,), 0.8))


def test_purge_keeps_a_deletion_the_monitor_clears_over_a_closer_flagged_one() -> None:
    """Per-PV thresholds: 'bb' matches its PV on 0.90 (under its 0.95), 'aa' on 0.85 (over its 0.8)."""

    def evaluate(texts: list[str]) -> tuple[torch.Tensor, MonitorResult]:
        words = [set(t.split()) for t in texts]
        flagged = torch.tensor(["aa" in w for w in words])
        match = torch.tensor([0.9 if "bb" in w else 0.85 if "aa" in w else 0.1 for w in words])
        return torch.zeros(len(texts), 2), MonitorResult(flagged, match, torch.where(flagged, 0, -1))

    outcome = purge(["x aa bb y"], evaluate, max_removed=1)[0]
    assert outcome.cleaned and outcome.removed == ("aa",) and outcome.text == "x bb y"


def test_purge_counts_every_candidate_and_keeps_the_last_answer() -> None:
    outcomes = purge(["one aa two bb aa three"], _fake_evaluate([]), max_removed=3)
    assert outcomes[0].cleaned and outcomes[0].candidates == 5 + 4  # both rounds
    refused = purge(["one aa two bb aa three"], _fake_evaluate([]), max_removed=1)[0]
    assert not refused.cleaned and refused.candidates == 5
    assert refused.match == pytest.approx(0.85)  # 'bb' is left: closer to clearing than before
    assert refused.logits is not None and refused.logits.tolist() == [1.0, 1.0]  # the logits of that variant
    assert refused.text == "one two bb three"
    log: list[int] = []
    untouched = purge(["one aa"], _fake_evaluate(log), max_removed=0)[0]
    assert log == [] and not untouched.cleaned and (untouched.removed, untouched.candidates) == ((), 0)


def test_of_several_deletions_that_clear_the_purge_keeps_the_one_furthest_from_the_pvs() -> None:
    """Deleting any of several words clears the monitor, at different matches; ties go to the leftmost word."""

    def deleting(text: str, matches: dict[str, float]):
        """An evaluate for ``text``'s single-word deletions: the match once each word is gone (else flagged)."""

        def evaluate(texts: list[str]) -> tuple[torch.Tensor, MonitorResult]:
            gone = [set(text.split()) - set(t.split()) for t in texts]
            match = torch.tensor([min((matches.get(w, 0.9) for w in g), default=0.95) for g in gone])
            return torch.zeros(len(texts), 2), MonitorResult(match > 0.8, match, torch.where(match > 0.8, 0, -1))

        return evaluate

    text = "x aa bb cc y"
    [lowest] = purge([text], deleting(text, {"aa": 0.5, "bb": 0.3, "cc": 0.4}), max_removed=1)
    assert lowest.cleaned and lowest.removed == ("bb",) and lowest.text == "x aa cc y"
    assert lowest.match == pytest.approx(0.3)
    [tied] = purge([text], deleting(text, {"aa": 0.5, "bb": 0.3, "cc": 0.3}), max_removed=1)
    assert tied.cleaned and tied.removed == ("bb",) and tied.text == "x aa cc y"
    [tied] = purge([text], deleting(text, {"aa": 0.3, "bb": 0.5, "cc": 0.3}), max_removed=1)
    assert tied.removed == ("aa",)  # the leftmost of the two at 0.3
