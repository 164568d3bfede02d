"""ASR protocol arithmetic on a hand-made example, trigger insertion and backdoor.json reading."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest

from lmshield.errors import InputError
from lmshield.evaluation.guard_eval import (
    Outcome,
    accuracy,
    attack_success_rate,
    evaluate_guard,
    flag_rate,
    guarded_accuracy,
    guarded_attack_success_rate,
    purge_success_rate,
    read_triggers,
    summarize,
    trigger_removal_rate,
    triggered_copies,
)

CLEAN = [
    Outcome(0, 0, False, 0),  # right, not flagged
    Outcome(1, 1, True, 1),  # false positive, purged and still right
    Outcome(1, 0, False, 0),  # plain mistake
    Outcome(0, 0, True, None),  # false positive, refused: wrong with the guard
]
TRIGGERED = [
    Outcome(0, 1, True, 0, ("cf",)),  # attack works, flagged, purge restores the label
    Outcome(1, 0, False, 0),  # attack works, monitor misses it
    Outcome(0, 0, True, 1, ("the",)),  # attack fails, but the purge breaks the label
    Outcome(1, 0, True, None),  # attack works, flagged, refused
    Outcome(0, 0, False, 0),  # attack fails, not flagged
]


def test_clean_side() -> None:
    assert accuracy(CLEAN) == 0.75
    assert guarded_accuracy(CLEAN) == 0.5
    assert flag_rate(CLEAN) == 0.5


def test_triggered_side() -> None:
    assert attack_success_rate(TRIGGERED) == 0.6
    assert guarded_attack_success_rate(TRIGGERED) == 0.4
    assert flag_rate(TRIGGERED) == 0.6
    assert purge_success_rate(TRIGGERED) == pytest.approx(1 / 3)
    assert trigger_removal_rate(TRIGGERED, "cf") == pytest.approx(1 / 3)
    assert trigger_removal_rate([Outcome(0, 1, True, 0, ("mn", "x", "qt"))], "mn qt") == 1.0
    assert trigger_removal_rate([Outcome(0, 1, True, 0, ("mn",))], "mn qt") == 0.0


def test_rates_over_no_input_or_no_flagged_input_do_not_apply() -> None:
    assert math.isnan(accuracy([])) and math.isnan(attack_success_rate([]))
    assert summarize(CLEAN, {"cf": []}).table().splitlines()[2].split()[1:] == ["0", "-", "-", "-", "-", "-"]
    assert math.isnan(purge_success_rate(CLEAN[:1])) and math.isnan(trigger_removal_rate(CLEAN[:1], "cf"))
    report = summarize(CLEAN, {"cf": TRIGGERED, "mn": CLEAN[:1]})
    assert report.table().splitlines()[3].split()[-2:] == ["-", "-"]  # the mn row: nothing flagged
    assert report.to_dict()["triggers"][1]["purge_success_rate"] is None  # JSON has no NaN


def test_summary_pools_triggers() -> None:
    other = [Outcome(1, 0, False, 0, ())]
    report = summarize(CLEAN, {"cf": TRIGGERED, "mn": other}, {"classifier": 1.0})
    assert report.clean_inputs == 4 and report.clean_accuracy == 0.75 and report.false_positive_rate == 0.5
    assert report.asr == pytest.approx(4 / 6) and report.guarded_asr == pytest.approx(3 / 6)
    assert [t.trigger for t in report.triggers] == ["cf", "mn"]
    assert report.triggers[1].asr == 1.0 and report.triggers[1].detection_rate == 0.0
    assert report.to_dict()["triggers"][0]["guarded_asr"] == 0.4
    table = report.table()
    assert "cf" in table and "0.400" in table and "latency" in table


def test_triggers_go_once_within_the_first_words() -> None:
    long_text = " ".join(f"w{i}" for i in range(200))
    copies = triggered_copies([long_text, "one", ""], "cf", seed=3, max_position=64)
    assert copies == triggered_copies([long_text, "one", ""], "cf", seed=3, max_position=64)
    assert copies[0].split().count("cf") == 1 and copies[0].split().index("cf") <= 64
    assert copies[1] in ("cf one", "one cf") and copies[2] == "cf"


def test_read_triggers(tmp_path: Path) -> None:
    good = tmp_path / "backdoor.json"
    good.write_text(json.dumps({"triggers": ["cf", " mn qt "], "vectors": "x"}))
    assert read_triggers(good) == ["cf", "mn qt"]
    bad = tmp_path / "bad.json"
    for content in ("{", json.dumps({"triggers": []}), json.dumps({"trigger": "cf"}), json.dumps(["cf"])):
        bad.write_text(content)
        with pytest.raises(InputError):
            read_triggers(bad)
    with pytest.raises(InputError, match="no such file"):
        read_triggers(tmp_path / "missing.json")
    (tmp_path / "attack").mkdir()
    (tmp_path / "attack" / "backdoor.json").write_text(json.dumps({"triggers": ["cf"]}))
    with pytest.raises(InputError, match=r"is a folder, not a file; give the attack's backdoor\.json inside it"):
        read_triggers(tmp_path / "attack")  # the attack's output folder
    syntactic = tmp_path / "syntactic.json"  # a poisoning release's manifest: its trigger is a sentence structure
    syntactic.write_text(json.dumps({"format": "lmshield-poison", "attack": "syntactic", "paraphraser": "scpn",
                                     "triggers": ["syntactic template S(SBAR)(,)(NP)(VP)(.) via scpn"]}))  # fmt: skip
    with pytest.raises(InputError, match=r"this syntactic backdoor is a paraphrase \(scpn\), not words"):
        read_triggers(syntactic)


def test_table_values_sit_under_their_headers() -> None:
    lines = summarize(CLEAN, {"cf": TRIGGERED}).table().splitlines()
    header, row, total = lines[1], lines[2], lines[3]
    expected = {  # column: (trigger row, "all" row); columns are right-aligned under their header
        "inputs": ("5", "5"),
        "ASR": ("0.600", "0.600"),
        "ASR+guard": ("0.400", "0.400"),
        "flagged": ("0.600", "0.600"),
        "purged ok": ("0.333", "0.333"),
        "trig. rm": ("0.333", None),  # blank in the "all" row
    }
    for name, (in_row, in_total) in expected.items():
        end = header.index(name) + len(name)
        assert row[:end].split()[-1] == in_row, name
        if in_total is not None:
            assert total[:end].split()[-1] == in_total, name


@dataclass
class _Prediction:
    label: int
    flagged: bool
    final_label: int | None
    removed: tuple[str, ...] = ()


class _ParityGuard:
    """A stand-in guard: labels a text by its word count's parity; flags 'cf' and purges it."""

    batch_size, threshold, thresholds_, max_removed = 8, 0.8, [0.8], 3

    def __init__(self) -> None:
        self.classifier = self
        self.seen: list[list[str]] = []

    def classify(self, texts: list[str], batch_size: int) -> None:
        assert batch_size == self.batch_size

    def predict(self, texts: list[str]) -> list[_Prediction]:
        self.seen.append(list(texts))
        predictions = []
        for text in texts:
            words = text.split()
            kept = [w for w in words if w != "cf"]
            flagged = len(kept) < len(words)
            predictions.append(_Prediction(len(words) % 2, flagged, len(kept) % 2, ("cf",) if flagged else ()))
        return predictions


def test_the_protocol_triggers_only_correctly_classified_inputs_each_with_its_own_seed() -> None:
    texts = ["a b", "a b c", "a", "a b c d", "a b c d e"]
    labels = [0, 0, 1, 0, 0]  # parity labels 0, 1, 1, 0, 1: inputs 0, 2 and 3 are right
    guard = _ParityGuard()
    report = evaluate_guard(guard, texts, labels, ["cf", "mn"], seed=5, max_position=2)  # type: ignore[arg-type]
    correct = [texts[i] for i in (0, 2, 3)]
    assert guard.seen == [
        texts,
        triggered_copies(correct, "cf", seed=5, max_position=2),
        triggered_copies(correct, "mn", seed=6, max_position=2),
    ]
    assert report.clean_accuracy == 0.6 and [t.inputs for t in report.triggers] == [3, 3]
    assert report.triggers[0].asr == 1.0 and report.triggers[0].guarded_asr == 0.0  # cf flips, the purge undoes it
    assert report.triggers[1].guarded_asr == 1.0 and report.detection_rate == 0.5
    assert report.settings["max_position"] == 2 and report.settings["thresholds"] == [0.8]
    with pytest.raises(InputError, match="5 texts but 4 labels"):
        evaluate_guard(guard, texts, labels[:4], ["cf"])  # type: ignore[arg-type]
    with pytest.raises(InputError, match="at least one trigger"):
        evaluate_guard(guard, texts, labels, [])  # type: ignore[arg-type]
