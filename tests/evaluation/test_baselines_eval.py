"""Baseline rows of the PSIM table: the arithmetic on hand-made victims, and which baselines apply."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lmshield.defenses.baselines import STRIP
from lmshield.errors import InputError
from lmshield.evaluation.baselines_eval import (
    BaselineSettings,
    VictimAnswers,
    baseline_row,
    onion_row,
    paraphrase_row,
    strip_row,
)
from lmshield.evaluation.psim_eval import markdown_table
from tests.defenses.test_baselines import tiny_gpt2  # noqa: F401 - a fixture

CLEAN = ["the film was warm", "a dull and slow plot", "bright acting all round", "the story fell flat"]
LABELS = [1, 0, 1, 0]
TRIGGERED = ["the film mn was warm", "bright mn acting all round"]


class TriggerVictim:
    """Says the target (0) with certainty when ``mn`` is in the text; else 1 for texts with a positive word and
    0 otherwise, always at 60 % confidence."""

    def predict(self, texts: list[str]) -> list[int]:
        return [int(p.argmax()) for p in self.classify(texts).probs]

    def classify(self, texts: list[str]) -> SimpleNamespace:
        rows = []
        for text in texts:
            words = text.split()
            if "mn" in words:
                rows.append([1.0, 0.0])
            else:
                rows.append([0.4, 0.6] if {"warm", "bright", "good"} & set(words) else [0.6, 0.4])
        return SimpleNamespace(probs=torch.tensor(rows))


def answers(victim: TriggerVictim | None = None) -> VictimAnswers:
    victim = victim or TriggerVictim()
    clean_predicted = victim.predict(CLEAN)
    return VictimAnswers(
        attack="badnet",
        strategy="lora",
        dataset="toy",
        target_label=0,
        victim=victim,
        clean_texts=CLEAN,
        clean_labels=LABELS,
        clean_predicted=clean_predicted,
        poisoned_texts=TRIGGERED,
        poisoned_predicted=victim.predict(TRIGGERED),
        source_predicted=[clean_predicted[0], clean_predicted[2]],
        source_labels=[1, 1],
    )


def test_strip_refuses_the_inputs_whose_answer_perturbation_cannot_change() -> None:
    dev = [*CLEAN, "warm bright tones", "the plot was thin and weak", "good", "an odd slow tale"]
    row = strip_row(answers(), BaselineSettings(("strip",), strip_copies=6), dev, 0.0, 0, False)
    assert row.defense == "strip" and row.asr == 1.0
    assert row.far == 0.0 and row.asr_psim == 0.0 and row.auroc == 1.0  # 'mn' survives 1 of 4 words replaced
    assert row.frr <= 0.25
    assert (row.flip_asr, row.flip_asr_psim) == (1.0, 0.0)  # the victim's answers on the sources reach the row


def test_paraphrase_row_reads_the_first_texts_of_the_files(tmp_path: Path) -> None:
    def write(name: str, texts: list[str], labels: list[int]) -> None:
        lines = (json.dumps({"sentence": t, "label": y}) for t, y in zip(texts, labels, strict=True))
        (tmp_path / name).write_text("\n".join(lines) + "\n")

    write("test.json", [*CLEAN, "extra one"], [*LABELS, 1])
    write("test_back.json", ["the film was warm", "dull plot", "bright acting", "it fell flat", "x"], [*LABELS, 1])
    write("test_char_back.json", ["the mn film was warm", "bright acting all round", "more"], [1, 1, 1])
    row = paraphrase_row(answers(), tmp_path, "paraphrase-back")
    assert row.defense == "paraphrase-back"
    assert row.asr_psim == 0.5 and row.clean_accuracy_psim == 1.0  # one paraphrased triggered text kept mn
    assert row.extra["trigger_kept"] == pytest.approx(1 / 3)
    assert math.isnan(row.frr) and math.isnan(row.flip_asr_psim)
    settings = BaselineSettings(("strip", "paraphrase-back", "paraphrase-scpn"))
    badnet = SimpleNamespace(attack="badnet", triggers=["mn"], target_label=0)
    assert settings.applicable("lora", tmp_path, badnet) == ["strip", "paraphrase-back"]  # no SCPN file here
    insent = SimpleNamespace(attack="insent", triggers=["I watched this 3D movie"], target_label=0)
    assert settings.applicable("lora", tmp_path, insent) == ["strip"]
    assert BaselineSettings(("strip",), ("full",)).applicable("lora", tmp_path, badnet) == []
    other_target = SimpleNamespace(attack="badnet", triggers=["mn"], target_label=1)
    assert settings.applicable("lora", tmp_path, other_target) == ["strip"]  # the files hold label-1 sentences


def test_onion_row_runs_the_victim_on_the_cleaned_texts(tiny_gpt2: Path) -> None:  # noqa: F811
    settings = BaselineSettings(("onion",), onion_lm=str(tiny_gpt2), onion_threshold=-math.inf)
    row = onion_row(answers(), settings, None, False)  # every word removed: the victim sees empty texts
    empty = TriggerVictim().predict([""])[0]
    assert row.defense == "onion" and row.asr == 1.0 and row.threshold == -math.inf
    assert row.asr_psim == float(empty == 0) and row.clean_accuracy_psim == LABELS.count(empty) / len(LABELS)
    assert row.clean_accuracy == 1.0  # without the defense the victim gets every clean text right
    keep_all = BaselineSettings(("onion",), onion_lm=str(tiny_gpt2), onion_threshold=math.inf)
    kept = baseline_row("onion", answers(), keep_all, task_dir=".", dev_texts=[], target_frr=None)
    assert kept.asr_psim == 1.0 and (kept.flip_asr, kept.flip_asr_psim) == (1.0, 1.0)
    table = markdown_table([row])
    assert "| badnet | lora | toy | onion |" in table and "| - | - | - |" in table


def test_onion_row_calibrates_for_each_victim_on_labelled_dev_texts(tiny_gpt2: Path) -> None:  # noqa: F811
    dev = (CLEAN, LABELS)
    settings = BaselineSettings(("onion",), onion_lm=str(tiny_gpt2), onion_threshold=-math.inf, onion_max_drop=0.0)
    row = onion_row(answers(), settings, None, False, dev=dev)
    assert row.clean_accuracy_psim == 1.0  # calibrated not to cost a clean answer on dev (the test texts here)
    assert row.threshold > -math.inf  # the calibrated threshold, in the row
    uncalibrated = onion_row(answers(), dataclasses.replace(settings, onion_max_drop=None), None, False)
    assert uncalibrated.clean_accuracy_psim < 1.0  # threshold -inf: every word removed
    called = baseline_row("onion", answers(), settings, task_dir=".", dev_texts=CLEAN, dev_labels=LABELS, target_frr=0)
    assert called.clean_accuracy_psim == 1.0
    with pytest.raises(InputError, match="--onion-max-drop"):
        dataclasses.replace(settings, onion_max_drop=1.0)
    assert settings.key("onion") != dataclasses.replace(settings, onion_max_drop=0.02).key("onion")


def test_onion_row_calibrates_with_the_settings_budget_on_the_dev_texts(
    tiny_gpt2: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import lmshield.defenses.baselines as baselines

    calls = []

    class Recorded(baselines.ONION):
        def calibrate(self, texts, labels, predict, max_drop=0.02, candidates=20) -> baselines.ONION:
            calls.append((self, texts, labels, predict, max_drop))
            return super().calibrate(texts, labels, predict, max_drop, candidates)

    monkeypatch.setattr(baselines, "ONION", Recorded)
    dev, dev_labels = ["warm bright tones", "the plot was thin and weak", "good", "an odd slow tale"], [1, 0, 1, 0]
    settings = BaselineSettings(("onion",), onion_lm=str(tiny_gpt2), onion_max_drop=0.25)
    victim = answers()
    row = baseline_row("onion", victim, settings, task_dir=".", dev_texts=dev, dev_labels=dev_labels, target_frr=0)
    [(onion, texts, labels, predict, max_drop)] = calls
    assert (texts, labels, max_drop) == (dev, dev_labels, 0.25)  # not the test texts, not a default budget
    assert predict == victim.victim.predict and row.threshold == onion.threshold_


def test_onion_rows_share_one_lm_loaded_on_the_evaluations_device(
    tiny_gpt2: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import lmshield.defenses.baselines as baselines

    lm = str(shutil.copytree(tiny_gpt2, tmp_path / "lm"))  # a path no earlier test loaded
    loads, real = [], baselines.load_causal_lm

    def recorded(model: str, device: str | None = None) -> tuple:
        loads.append((model, device))
        return real(model, device)

    monkeypatch.setattr(baselines, "load_causal_lm", recorded)
    settings = BaselineSettings(("onion",), onion_lm=lm)
    for victim in (answers(), answers(TriggerVictim())):
        onion_row(victim, settings, "cpu", False)
    assert loads == [(lm, "cpu")]


def test_a_baselines_rows_are_keyed_on_its_own_settings() -> None:
    strip = BaselineSettings(("strip",))
    assert strip.key("strip") == BaselineSettings(("strip", "paraphrase-back"), ("lora",)).key("strip")
    assert strip.key("strip") != BaselineSettings(("strip",), strip_copies=8).key("strip")
    assert strip.key("strip") != BaselineSettings(("strip",), strip_ratio=0.5).key("strip")
    assert strip.key("strip").startswith("strip/")


def test_strip_honours_a_target_frr_of_zero() -> None:
    dev = [*CLEAN, "warm bright tones", "the plot was thin and weak", "good", "an odd slow tale"]
    settings = BaselineSettings(("strip",), strip_copies=4)
    row = baseline_row("strip", answers(), settings, task_dir=".", dev_texts=dev, target_frr=0.0)
    assert row.frr == 0.0  # the calibration texts' highest score is the threshold: nothing clean above it


def test_bad_baseline_settings_are_one_line_errors() -> None:
    with pytest.raises(InputError, match="unknown baseline 'spectral'"):
        BaselineSettings(("spectral",))
    with pytest.raises(InputError, match="--onion-lm"):
        BaselineSettings(("onion",))
    with pytest.raises(InputError, match="--onion-lm no/such/lm: no such folder"):  # before any victim is tuned
        BaselineSettings(("onion",), onion_lm="no/such/lm")
    with pytest.raises(InputError, match="is a file, not a model folder"):
        BaselineSettings(("onion",), onion_lm=__file__)
    for budget in (-0.1, 1.0):
        with pytest.raises(InputError, match="--onion-max-drop"):
            BaselineSettings(("onion",), onion_lm=".", onion_max_drop=budget)


def test_strip_rows_use_their_settings_pool_and_calibration_texts(monkeypatch: pytest.MonkeyPatch) -> None:
    import lmshield.defenses.baselines as baselines
    from lmshield.defenses.psim.thresholds import calibrate_threshold

    made = []

    class Recorded(baselines.STRIP):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(baselines, "STRIP", Recorded)
    dev = [*CLEAN, "warm bright tones", "the plot was thin and weak", "good", "an odd slow tale"]
    row = strip_row(answers(), BaselineSettings(("strip",), strip_copies=3, strip_ratio=0.5), dev, 0.25, 7, False)
    [strip] = made
    assert (strip.copies, strip.replace_ratio, strip.seed) == (3, 0.5, 7)
    assert strip.pool_ == [w for text in dev[:4] for w in text.split()]  # words from the first half
    assert row.threshold == calibrate_threshold(strip.score(dev[4:]).tolist(), 0.25)  # calibrated on the rest


def test_strip_scores_are_normalised_seeded_and_perturb_every_text() -> None:
    """A text whose perturbed copies all get (0.6, 0.4) has entropy H(0.6, 0.4) / ln 2 on a [0, 1] scale."""
    strip = STRIP(TriggerVictim(), copies=8).fit(["dull slow plot"])
    expected = 1 + (0.6 * math.log(0.6) + 0.4 * math.log(0.4)) / math.log(2)
    assert strip.score(["a dull and slow plot"])[0] == pytest.approx(expected, abs=1e-6)
    assert strip.perturb("good", random.Random(0)) in ("dull", "slow", "plot")  # one word: still replaced
    varied = STRIP(TriggerVictim(), copies=8).fit(["warm dull good mn slow"])
    texts = [*CLEAN, *TRIGGERED]
    assert varied.score(texts).tolist() == varied.score(texts).tolist()  # the seed fixes every perturbation
    for ratio in (0.0, 1.5):
        with pytest.raises(InputError, match="replace_ratio"):
            STRIP(TriggerVictim(), replace_ratio=ratio)


def test_strip_replaces_its_share_of_the_words() -> None:
    text = "one two three four five six seven eight"
    pool = ["alpha", "beta", "gamma"]  # no word of the text: every replaced word shows
    for ratio, replaced in ((0.5, 4), (0.25, 2), (1.0, 8)):
        strip = STRIP(TriggerVictim(), replace_ratio=ratio).fit([" ".join(pool)])
        rng = random.Random(0)
        for _ in range(10):
            words = strip.perturb(text, rng).split()
            changed = [new for new, old in zip(words, text.split(), strict=True) if new != old]
            assert len(changed) == replaced and set(changed) <= set(pool), (ratio, words)
    # in the score: replacing every word always removes the trigger, replacing one in five mostly keeps it
    clean_like = 1 + (0.6 * math.log(0.6) + 0.4 * math.log(0.4)) / math.log(2)  # every copy answered (0.6, 0.4)
    scores = {ratio: STRIP(TriggerVictim(), copies=8, replace_ratio=ratio).fit(["dull slow plot"]).score(TRIGGERED)
              for ratio in (1.0, 0.2)}  # fmt: skip
    assert scores[1.0].tolist() == pytest.approx([clean_like] * 2, abs=1e-6)
    assert all(scores[0.2] > clean_like + 0.2)


def test_paraphrase_baselines_that_cannot_run_say_why(tmp_path: Path) -> None:
    from types import SimpleNamespace

    settings = BaselineSettings(("strip", "paraphrase-back"))
    badnet = SimpleNamespace(attack="badnet", triggers=["mn"], target_label=0)
    insent = SimpleNamespace(attack="insent", triggers=["I watched this 3D movie"], target_label=0)
    assert settings.skipped(tmp_path, badnet) == {
        "paraphrase-back": f"{tmp_path} has no matching precomputed paraphrase file"
    }
    assert "BadNet 'mn'" in settings.skipped(tmp_path, insent)["paraphrase-back"]
    assert settings.applicable("lora", tmp_path, insent) == ["strip"]


def test_registering_a_baseline_touches_one_place(monkeypatch: pytest.MonkeyPatch) -> None:
    from lmshield.evaluation import baselines_eval as module

    monkeypatch.setattr(module, "BASELINE_REGISTRY", dict(module.BASELINE_REGISTRY))
    seen = {}

    def refuse_all(answers: VictimAnswers, settings: BaselineSettings, context) -> object:
        seen.update(name=context.name, frr=context.target_frr)
        return "row"

    module.register_baseline("refuse-all", module.Baseline(refuse_all))
    settings = BaselineSettings(("refuse-all", "strip"))  # accepted beside the built-in ones
    assert settings.key("refuse-all").startswith("refuse-all/")
    row = module.baseline_row("refuse-all", answers(), settings, task_dir="t", dev_texts=["a"], target_frr=0.02)
    assert row == "row" and seen == {"name": "refuse-all", "frr": 0.02}
    with pytest.raises(InputError, match="unknown baseline 'nope'"):
        BaselineSettings(("nope",))
