"""PSIM: random-label training flags triggered inputs, passes clean ones, calibrates, and round-trips."""

from __future__ import annotations

import ast
import copy
import json
import math
import random
import shutil
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from lmshield.attacks.poisoning import BadNetConfig, make_poisoner, triggered_test_set
from lmshield.defenses.psim import (
    PSIM,
    PSIMConfig,
    ShieldedClassifier,
    auto_learning_rate,
    calibrate_threshold,
    default_threshold,
    normalise,
    random_labels,
    training,
)
from lmshield.defenses.psim.detector import most_confident_view
from lmshield.defenses.psim.training import has_classification_head, train_random_label_module, tuning_config
from lmshield.errors import InputError
from lmshield.evaluation.psim_eval import score_auroc
from lmshield.text.clauses import split_clauses
from tests.attacks.test_poisoning import released, task

SRC = Path(__file__).resolve().parents[2] / "src" / "lmshield"
# LoRA: on the tiny 2-layer BERT, prompt methods trained on random labels shift clean and triggered confidence
# alike (its tanh pooler saturates both); LoRA on query/value separates them, as P-tuning does on real models.
SETTINGS = {"epochs": 3, "lr": 1e-3, "batch_size": 16, "max_length": 32, "progress": False}


def fitted(classes: int = 2) -> PSIM:
    """A fitted PSIM of its own (tests calibrate it): a copy of the one fitted per process."""
    return copy.deepcopy(_fitted(classes))


@lru_cache(maxsize=4)
def _fitted(classes: int) -> PSIM:
    return PSIM("lora", **SETTINGS).fit(released("badnet", "dirty", classes), task(300, 4, classes).texts, classes)


def triggered(classes: int = 2, count: int = 200) -> list[str]:
    return triggered_test_set(task(count, 3, classes), make_poisoner(BadNetConfig()), 0, seed=5).texts


def test_psim_trains_the_released_pooler_by_default() -> None:
    """lmshield's choice, not the release's (victims keep it frozen): see PSIMConfig for the measured gain."""
    assert PSIMConfig().train_pooler is True and tuning_config(PSIMConfig(), True, 100).train_pooler is True
    assert tuning_config(PSIMConfig(train_pooler=False), True, 100).train_pooler is False
    with pytest.raises(InputError, match="train_pooler must be true or false"):
        PSIMConfig(train_pooler="no")


def test_fit_wants_the_released_models_folder_not_a_loaded_encoder() -> None:
    from lmshield.testing import tiny_encoder

    with pytest.raises(InputError, match="not a loaded Encoder"):
        PSIM().fit(tiny_encoder("bert"), ["a text", "another"], 2)


def test_release_settings_and_threshold() -> None:
    config = PSIMConfig()
    assert (config.method, config.epochs, config.batch_size) == ("ptuning", 1, 32)
    assert config.learning_rate(6920) == pytest.approx(2e-5)  # the release's lr on the release's data
    assert (config.num_virtual_tokens, config.encoder_hidden_size) == (5, 128)
    assert default_threshold(2) == pytest.approx(0.7)
    assert normalise(default_threshold(4), 4) == pytest.approx(0.4)
    assert fitted().threshold_ == pytest.approx(0.7)
    assert PSIM(threshold=0.9).get_params()["threshold"] == 0.9
    with pytest.raises(InputError, match="score"):
        PSIM(score_kind="logit")
    with pytest.raises(InputError, match="unknown tuning method"):
        PSIM("adapters")


def test_scikit_learn_clones_psim() -> None:
    base = pytest.importorskip("sklearn.base")  # not a dependency: checked where a user has it
    psim = PSIM("prompt", epochs=2, score_kind="normalised", threshold=0.5)
    assert base.clone(psim).get_params() == psim.get_params()


def test_parameters_follow_the_scikit_learn_protocol(tmp_path: Path) -> None:
    psim = PSIM("prompt", epochs=2, score_kind="normalised", threshold=0.5)
    params = psim.get_params(deep=True)
    assert all(getattr(psim, name) == value for name, value in params.items())
    clone = type(psim)(**params)  # what sklearn.base.clone does
    assert clone.get_params() == params and not clone.is_fitted
    assert psim.set_params(lr=1e-4, seed=3) is psim and (psim.lr, psim.seed) == (1e-4, 3)
    with pytest.raises(InputError, match="unknown PSIM parameter"):
        psim.set_params(temperature=2)
    with pytest.raises(InputError, match="score kind"):
        psim.set_params(score_kind="logit")
    assert psim.score_kind == "normalised"
    assert PSIMConfig.from_dict({"score": "normalised"}).score_kind == "normalised"  # saved before the rename
    assert (PSIMConfig(keep_head=True).keep_head, PSIMConfig(keep_head=False).keep_head) == ("yes", "no")
    hostile = tmp_path / "hostile"
    hostile.mkdir()
    for content in (b"[]", b"\xff\xfe", b'{"architectures": "BertForSequenceClassification"}'):
        (hostile / "config.json").write_bytes(content)
        assert not has_classification_head(hostile)


def test_default_lr_spreads_the_release_update_over_the_fit() -> None:
    assert auto_learning_rate(1000) == pytest.approx(2e-5 * 217 / 32)
    assert auto_learning_rate(6920, epochs=2) == pytest.approx(1e-5)
    assert auto_learning_rate(6920, batch_size=16) == pytest.approx(1e-5, rel=0.01)
    assert auto_learning_rate(10) == auto_learning_rate(0) == pytest.approx(3e-4)  # capped
    assert PSIMConfig(lr=1e-3).learning_rate(50) == 1e-3
    with pytest.raises(InputError, match="lr"):
        PSIMConfig(lr=0.0)
    tiny = {**SETTINGS, "epochs": 1, "lr": None}
    texts = task(64, 4).texts
    assert PSIM("lora", **tiny).fit(released("badnet"), texts, 2).lr_ == pytest.approx(3e-4)
    assert fitted().lr_ == 1e-3


def test_random_labels_are_uniform_and_seeded() -> None:
    labels = random_labels(300, 3, seed=1)
    assert [labels.count(k) for k in range(3)] == [100, 100, 100]
    assert labels == random_labels(300, 3, seed=1) != random_labels(300, 3, seed=2)


def test_psim_flags_triggered_inputs_and_passes_clean_ones() -> None:
    psim = fitted()
    clean_scores, poison_scores = psim.score(task(200, 3).texts), psim.score(triggered())
    assert poison_scores.mean() > clean_scores.mean()
    assert score_auroc(clean_scores.tolist(), poison_scores.tolist()) >= 0.95
    psim.calibrate(task(200, 6).texts, target_frr=0.05)
    assert psim.flag(triggered()).mean() >= 0.9
    assert 1 - psim.flag(task(200, 3).texts).mean() >= 0.85


def test_calibration_meets_the_target_frr_on_held_out_texts() -> None:
    psim = fitted()
    calibration_texts = task(300, 7).texts
    for target in (0.05, 0.1, 0.105, 0.2):  # 0.105 of 300 texts: at most 31 flagged, under the target
        psim.calibrate(calibration_texts, target_frr=target)
        achieved = psim.calibration_.achieved_frr
        assert achieved == pytest.approx(psim.flag(calibration_texts).mean()) and 0 < achieved <= target
        assert (psim.calibration_.target_frr, psim.calibration_.num_texts) == (target, 300)
        held_out = psim.flag(task(300, 8).texts).mean()
        assert abs(held_out - target) <= 0.06, (target, held_out)


def test_calibrating_on_too_few_texts_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="lmshield.defenses.psim.thresholds"):
        calibrate_threshold([i / 100 for i in range(100)], 0.02)  # 2 texts above the cut
    assert "give at least 250 held-out texts" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="lmshield.defenses.psim.thresholds"):
        calibrate_threshold([i / 1000 for i in range(1000)], 0.02)  # 20 above the cut
    assert caplog.text == ""


def test_calibrate_threshold_by_hand() -> None:
    scores = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    assert calibrate_threshold(scores, 0.2) == 0.9  # floor(0.2 * 11) - 1 = 1 above the cut: 1.0
    assert calibrate_threshold(scores, 0.25) == 0.9  # floor(2.75) - 1 = 1
    assert calibrate_threshold(scores, 0.0) == 1.0
    assert calibrate_threshold(scores, 0.95) == 0.1  # floor(10.45) - 1 = 9 above the cut
    for useless in (1.0, -0.1, float("nan")):  # 1: every clean input may be refused
        with pytest.raises(InputError, match=r"target FRR must be in \[0, 1\)"):
            calibrate_threshold(scores, useless)
    assert calibrate_threshold([0.5, 0.5, 0.5, 0.9], 0.5) == 0.5  # ties at the cut all pass
    with pytest.raises(InputError):
        calibrate_threshold([], 0.1)
    with pytest.raises(InputError):
        calibrate_threshold(scores, 1.5)
    with pytest.raises(InputError, match="NaN"):
        calibrate_threshold([0.5, math.nan, 0.9], 0.1)


def test_a_calibrated_threshold_keeps_the_frr_on_new_inputs_within_the_target() -> None:
    """Averaged over calibration sets, the share of fresh clean scores above the cut stays under the target
    (uniform scores: a fresh one lies above t with probability 1 - t). The old rank, floor(target * n) above
    the cut, averaged 7 / 129 = 5.4 % here for a 5 % target."""
    rng = np.random.default_rng(0)
    frr = [1 - calibrate_threshold(rng.random(128).tolist(), 0.05) for _ in range(2000)]
    assert 0.044 < float(np.mean(frr)) < 0.05  # (k + 1) / (n + 1) = 6 / 129 = 4.65 %


def test_psim_takes_the_released_heads_class_count_unless_told() -> None:
    """The class count defaulted to 2: a 3-class release lost its head (PSIM's signal) to a fresh binary one,
    with the binary threshold, unless the caller remembered to say 3."""
    from lmshield.tuning.heads import ReleasedHead

    settings = {**SETTINGS, "epochs": 1}
    psim = PSIM("lora", **settings).fit(released("badnet", "dirty", 3), task(40, 4, 3).texts)
    assert psim.num_labels_ == 3 and isinstance(psim.classifier_.head, ReleasedHead)
    assert psim.threshold_ == pytest.approx(default_threshold(3))
    assert PSIM("lora", **settings).fit(released("badnet", "dirty", 3), task(40, 4, 3).texts, 2).num_labels_ == 2


def test_multi_class_psim(caplog: pytest.LogCaptureFixture) -> None:
    psim = fitted(3)
    assert psim.num_labels_ == 3 and psim.threshold_ == pytest.approx(1 / 3 + 0.4 * 2 / 3)
    texts = task(60, 3, 3).texts
    result = psim.scores(texts)
    probs = psim.classifier_.classify(texts).probs.numpy()  # the module's own answer: its top class and probability
    np.testing.assert_allclose(result.probability, probs.max(axis=1), atol=1e-6)
    assert result.label.tolist() == probs.argmax(axis=1).tolist() and len(set(result.label.tolist())) >= 2
    assert np.allclose(result.normalised, (result.probability - 1 / 3) / (2 / 3))
    clean, poison = psim.score(task(200, 3, 3).texts), psim.score(triggered(3))
    assert poison.mean() > clean.mean() + 0.1
    assert score_auroc(clean.tolist(), poison.tolist()) >= 0.7
    with pytest.raises(InputError, match="labels"):  # a head kept on request must fit the task
        PSIM("lora", **{**SETTINGS, "keep_head": True}).fit(released("badnet", "dirty", 3), task(40, 4).texts, 2)
    binary = PSIM("lora", **SETTINGS).fit(released("badnet", "dirty", 3), task(40, 4).texts, 2)  # "auto": a new head
    assert binary.num_labels_ == 2 and "the released head has 3 classes and the task 2" in caplog.text


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    psim = fitted()
    psim.calibrate(task(100, 6).texts, 0.1)
    texts = [*task(20, 3).texts, "", "mn"]
    psim.save_pretrained(tmp_path / "psim")
    assert (tmp_path / "psim" / "psim.json").is_file() and not list((tmp_path / "psim").rglob("*.bin"))
    loaded = PSIM.from_pretrained(tmp_path / "psim", progress=False)
    assert loaded.threshold_ == psim.threshold_ and loaded.calibration_ == psim.calibration_
    assert loaded.lr_ == psim.lr_
    assert loaded.get_params() == psim.get_params()
    assert np.allclose(loaded.score(texts), psim.score(texts), atol=1e-5)
    with pytest.raises(InputError, match="not a saved PSIM"):
        PSIM.from_pretrained(tmp_path)


@pytest.fixture(scope="module")
def saved_psim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fitted().save_pretrained(tmp_path_factory.mktemp("saved") / "psim")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda j: [j], "not a PSIM file"),
        (lambda j: {**j, "threshold_": -math.inf}, "not a usable threshold"),
        (lambda j: {**j, "threshold_": 5.0}, "not a usable threshold"),
        (lambda j: {**j, "threshold_": -5.0}, "not a usable threshold"),  # flags every input
        (lambda j: {**j, "num_labels_": math.inf}, "unreadable .OverflowError"),
        (lambda j: {**j, "num_labels_": 0}, "does not match the module's 2 labels"),
        (lambda j: {**j, "config": []}, "unreadable"),
        (lambda j: {**j, "config": {**j["config"], "epochs": 0}}, r"psim.json: epochs must be at least 1"),
        (lambda j: {**j, "format_version": 99}, "written by a newer lmshield"),
        (lambda j: {**j, "format": "other"}, r"^[^:]*psim.json: not a PSIM file"),  # the path once
        (lambda j: {**j, "calibration_": {"target_frr": "lots", "achieved_frr": 0, "num_texts": 3}}, "shares in"),
        (lambda j: {**j, "calibration_": {"target_frr": 0.1, "achieved_frr": 0, "num_texts": -1}}, "num_texts"),
        (lambda j: {**j, "calibration_": []}, "unreadable"),
    ],
)
def test_a_damaged_saved_psim_is_a_one_line_error(saved_psim: Path, tmp_path: Path, edit, message: str) -> None:
    directory = Path(shutil.copytree(saved_psim, tmp_path / "psim"))
    payload = json.loads((directory / "psim.json").read_text())
    (directory / "psim.json").write_text(json.dumps(edit(payload)))
    with pytest.raises(InputError, match=message):
        PSIM.from_pretrained(directory, progress=False)
    with pytest.raises(InputError, match=r"threshold must be in \[0, 1\)"):
        PSIM(threshold=1.5)


def test_short_inputs_and_misuse() -> None:
    psim = fitted()
    texts = ["", "mn", "word", "   "]
    scores = psim.score(texts)
    assert scores.shape == (4,) and np.all(np.isfinite(scores))
    np.testing.assert_allclose(scores, [psim.score([text])[0] for text in texts], atol=1e-5)  # padding-free
    assert psim.score([]).shape == (0,)
    with pytest.raises(InputError, match="one string"):
        psim.score("a text")
    with pytest.raises(InputError, match="not fitted"):
        PSIM().score(["x"])
    with pytest.raises(InputError, match="at least"):
        PSIM("lora", **SETTINGS).fit(released("badnet"), ["only one"], 2)
    with pytest.raises(InputError, match="num_labels must be a whole number"):
        PSIM("lora", **SETTINGS).fit(released("badnet"), texts, 2.5)
    with pytest.raises(InputError, match="item 1 is NoneType"):
        psim.score(["a text", None])
    for bad in ({"seed": None}, {"batch_size": "8"}, {"warmup_ratio": 5}, {"epochs": 1.5}):
        with pytest.raises(InputError, match=next(iter(bad))):
            PSIM(**bad)


def test_changing_the_score_kind_of_a_fitted_psim_keeps_its_flags() -> None:
    psim = copy.deepcopy(fitted()).calibrate(task(100, 6).texts, target_frr=0.1)  # the cached one stays as it is
    texts = [*task(60, 3).texts, *triggered()[:20]]
    flags, threshold = psim.flag(texts), psim.threshold_
    psim.set_params(score_kind="normalised")
    assert psim.threshold_ == pytest.approx(2 * threshold - 1)  # (p - 1/2) / (1 - 1/2)
    np.testing.assert_array_equal(psim.flag(texts), flags)
    psim.set_params(score_kind="probability")
    assert psim.threshold_ == pytest.approx(threshold)
    assert psim.scores(texts).probability.dtype == np.float64  # one precision on both scales: the same flags


def test_an_explicit_threshold_moves_to_the_new_score_scale_too() -> None:
    """A clone or refit reads the threshold parameter: left on the old scale it flagged other inputs."""
    psim = copy.deepcopy(fitted())
    psim.set_params(threshold=0.7)
    learned = psim.threshold_
    psim.set_params(score_kind="normalised")
    assert psim.get_params()["threshold"] == pytest.approx(0.4)  # (0.7 - 1/2) / (1 - 1/2)
    assert psim.threshold_ == pytest.approx(2 * learned - 1)


def test_a_saturated_calibration_saves_and_loads(tmp_path: Path) -> None:
    """Clean scores at 1.0 calibrate to a threshold of 1.0 (flags nothing): it must load back."""
    psim = copy.deepcopy(fitted())
    psim.threshold_ = 1.0
    assert PSIM.from_pretrained(psim.save_pretrained(tmp_path / "psim"), progress=False).threshold_ == 1.0


def test_a_calibration_saved_in_place_rewrites_only_psim_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """psim calibrate saved back into the PSIM's folder removed psim.json and rewrote the module: interrupted
    there, a valid PSIM was gone. Only psim.json (written whole) changes now; a refitted PSIM rewrites all."""
    from lmshield.tuning import TunedClassifier

    folder = copy.deepcopy(fitted()).save_pretrained(tmp_path / "psim")
    psim = PSIM.from_pretrained(folder, progress=False)
    psim.calibrate(task(200, 6).texts, 0.1)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(TunedClassifier, "save_pretrained", interrupted)
    psim.save_pretrained(folder)
    assert PSIM.from_pretrained(folder, progress=False).threshold_ == psim.threshold_
    with pytest.raises(KeyboardInterrupt):
        psim.save_pretrained(tmp_path / "elsewhere")  # another folder needs the module


class CountingVictim:
    def __init__(self) -> None:
        self.seen: list[str] = []

    def predict(self, texts: list[str]) -> list[int]:
        self.seen.extend(texts)
        return [1] * len(texts)


def test_shield_refuses_flagged_inputs_before_the_victim() -> None:
    psim = fitted()
    psim.calibrate(task(200, 6).texts, 0.05)
    clean, poisoned = task(30, 9).texts, triggered()[:30]
    inputs = [t for pair in zip(clean, poisoned, strict=True) for t in pair]
    random.Random(0).shuffle(inputs)
    victim = CountingVictim()
    report = ShieldedClassifier(psim, victim).predict(inputs)
    assert len(report.labels) == len(inputs) and len(victim.seen) == len(report.accepted)
    assert all(inputs[i] not in victim.seen for i in report.refused)
    assert all(report.labels[i] is None for i in report.refused)
    assert sum(inputs[i] in poisoned for i in report.refused) >= 27
    read_on = zip(inputs, report.views, strict=True)
    assert all(view in [text, *split_clauses(text, psim.max_length)] for text, view in read_on)
    assert "refused" in report.summary()


def test_defenses_never_import_attacks() -> None:
    for package in ("defenses/psim", "defenses/baselines"):
        for file in (SRC / package).glob("*.py"):
            tree = ast.parse(file.read_text())
            names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
            names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
            assert not any(name.startswith("lmshield.attacks") for name in names), file


def test_a_given_threshold_is_the_one_fit_uses() -> None:
    psim = PSIM("lora", threshold=0.9, **SETTINGS).fit(released("badnet"), task(40, 4).texts, 2)
    assert psim.threshold_ == 0.9
    assert psim.flags(np.array([0.85, 0.95])).tolist() == [False, True]


def test_a_nan_or_negative_threshold_is_refused() -> None:
    for bad in (math.nan, -0.1, 1.0):
        with pytest.raises(InputError, match="threshold"):
            PSIM(threshold=bad)


def test_the_released_head_is_kept_only_when_the_model_has_one(
    tiny_bert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple] = []

    def fake_tune(model: object, data: object, dev: object, config: object, **kwargs: object) -> SimpleNamespace:
        calls.append((model, data, dev, config))
        return SimpleNamespace(classifier="trained")

    monkeypatch.setattr(training, "tune", fake_tune)
    headed = tmp_path / "headed"
    headed.mkdir()
    (headed / "config.json").write_text(json.dumps({"architectures": ["BertForSequenceClassification"]}))
    assert has_classification_head(headed) and not has_classification_head(tiny_bert_dir)
    texts = [f"text number {i}" for i in range(10)]
    for model, keep_head, kept in (
        (headed, "auto", True), (tiny_bert_dir, "auto", False), (tiny_bert_dir, "yes", True), (headed, "no", False),
    ):  # fmt: skip
        config = PSIMConfig(keep_head=keep_head, seed=3)
        assert train_random_label_module(model, texts, 2, config, progress=False) == "trained"
        assert calls[-1][3].keep_head is kept, (model, keep_head)
    _, data, dev, _ = calls[-1]
    assert data.labels == random_labels(10, 2, seed=3) and data.texts == texts and dev.texts == texts
    for count, labels in ((1, 2), (5, 1)):
        with pytest.raises(InputError, match="at least"):
            train_random_label_module(headed, texts[:count], labels, PSIMConfig(), progress=False)
    # a task of 3 classes on a release whose head has 2: "auto" used to keep it and fail ("drop keep_head")
    train_random_label_module(headed, texts, 3, PSIMConfig(), progress=False)
    assert calls[-1][3].keep_head is False
    (headed / "config.json").write_text(
        json.dumps({"architectures": ["BertForSequenceClassification"], "id2label": {"0": "a", "1": "b", "2": "c"}})
    )
    train_random_label_module(headed, texts, 3, PSIMConfig(), progress=False)
    assert calls[-1][3].keep_head is True


def test_psim_keeps_the_last_epoch_of_its_random_label_training() -> None:
    """Dev accuracy on random labels means nothing, so the module of the last epoch is the one kept."""
    config = PSIMConfig(method="lora", epochs=3, seed=4, lr=1e-3)
    tuning = tuning_config(config, keep_head=True, num_texts=100)
    assert (tuning.checkpoint, tuning.epochs, tuning.seed, tuning.lr, tuning.keep_head) == ("last", 3, 4, 1e-3, True)
    prompt = tuning_config(PSIMConfig(method="ptuning", num_virtual_tokens=7), keep_head=False, num_texts=100)
    assert prompt.num_virtual_tokens == 7 and prompt.lr == PSIMConfig().learning_rate(100)


def test_numbers_given_as_strings_are_refused_at_construction() -> None:
    for bad in ("0.5", True, math.nan):
        with pytest.raises(InputError, match="threshold must be"):
            PSIM(threshold=bad)
    with pytest.raises(InputError, match=r"threshold must be a number, got '0\.5'"):
        PSIM().set_params(threshold="0.5")
    with pytest.raises(InputError, match=r"target FRR must be a number in \[0, 1\), got '0.1'"):
        calibrate_threshold([0.1, 0.2], "0.1")
    with pytest.raises(InputError, match="target FRR must be a number"):  # before any scoring, fitted or not
        PSIM().calibrate(["a text"], "0.1")


def test_a_bad_device_or_progress_is_refused_at_construction(tmp_path: Path) -> None:
    for params in ({"device": "bogus"}, {"progress": "no"}):
        with pytest.raises(InputError, match=r"unknown device 'bogus'|progress must be true or false"):
            PSIM(**params)
        with pytest.raises(InputError, match=r"unknown device 'bogus'|progress must be true or false"):
            PSIM().set_params(**params)
    with pytest.raises(InputError, match=r"^unknown device 'bogus'"):  # the caller's setting, not the file's
        PSIM.from_pretrained(tmp_path, device="bogus")
    assert PSIM(device="cpu").device == "cpu"


def test_flags_takes_scores_and_says_texts_go_to_flag() -> None:
    psim = PSIM(threshold=0.5)
    psim.classifier_, psim.threshold_, psim.num_labels_ = object(), 0.5, 2  # flags reads the threshold alone
    for bad in ("abc", ["0.4", "0.6"], [[0.4, 0.6]], [0.4, None]):
        with pytest.raises(InputError, match=r"flags takes the scores score\(texts\) gives; to flag texts"):
            psim.flags(bad)
    assert psim.flags([0.4, 0.6, math.nan]).tolist() == [False, True, False] and psim.flags([]).shape == (0,)


def test_fit_leaves_out_empty_texts_as_the_cli_reader_does(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from lmshield.defenses.psim import detector

    trained: list[list[str]] = []
    monkeypatch.setattr(detector, "train_random_label_module", lambda model, texts, *a, **k: trained.append(texts))
    with pytest.raises(InputError, match="every one of the 40 texts is empty"):
        PSIM().fit("no-model", [""] * 40, 2)
    with pytest.raises(InputError, match="every one of the 2 texts is empty"):
        PSIM().fit("no-model", ["", "  \n"], 2)
    assert not trained
    with caplog.at_level("WARNING", logger="lmshield.text.inputs"):
        psim = PSIM().fit("no-model", ["a text", "", "another", " "], 2)
    assert trained == [["a text", "another"]] and psim.n_train_ == 2
    assert "2 of 4 texts are empty and are left out" in caplog.text


def test_most_confident_view_by_hand() -> None:
    top = np.array([0.6, 0.9, 0.7, 0.5, 0.8, 0.8])
    owners = np.array([0, 0, 0, 1, 2, 2])
    assert most_confident_view(top, owners).tolist() == [1, 3, 4]  # ties: the first view (the whole text)
    assert most_confident_view(np.zeros(0), np.zeros(0, dtype=np.int64)).tolist() == []


def test_the_clause_span_reads_the_most_confident_of_a_text_and_its_clauses() -> None:
    psim = copy.deepcopy(fitted())
    clean, poisoned = task(12, 3).texts, triggered()[:12]
    texts = [f"{a} , {b}. {a}" for a, b in zip(clean, poisoned, strict=True)] + clean[:3] + ["", "mn"]
    assert psim.span == "clauses"  # lmshield's default; the release reads the whole text
    read = psim.scores(texts)
    psim.set_params(span="text")
    whole = psim.scores(texts)
    for i, text in enumerate(texts):
        views = [text, *split_clauses(text, psim.max_length)]
        each = psim.scores(views)
        best = int(np.argmax(each.probability))
        assert read.probability[i] == pytest.approx(each.probability[best])
        assert read.label[i] == each.label[best] and read.view[i] == views[best]
    assert (read.probability >= whole.probability).all() and (read.probability > whole.probability + 1e-3).any()


def test_the_span_is_validated_saved_and_read_back(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(InputError, match="unknown PSIM span 'words': use text or clauses"):
        PSIM(span="words")
    psim = copy.deepcopy(fitted()).set_params(span="text")
    assert PSIM.from_pretrained(psim.save_pretrained(tmp_path / "text"), progress=False).span == "text"
    loaded = PSIM.from_pretrained(copy.deepcopy(fitted()).save_pretrained(tmp_path / "psim"), progress=False)
    assert loaded.span == "clauses"
    payload = json.loads((tmp_path / "psim" / "psim.json").read_text())
    del payload["config"]["span"]  # written before the setting existed: the whole text, as then
    (tmp_path / "psim" / "psim.json").write_text(json.dumps(payload))
    assert PSIM.from_pretrained(tmp_path / "psim", progress=False).span == "text"
    loaded.calibrate(task(100, 6).texts, 0.1)  # reading clauses
    with caplog.at_level("WARNING", logger="lmshield"):
        loaded.set_params(span="text")
    assert "calibrated reading the clauses span; call calibrate again" in caplog.text
