"""ASR protocol of LMSanitator for a guarded classifier: pure arithmetic first, the protocol after.

An :class:`Outcome` records one input: its true label, the classifier's label, whether the monitor
flagged it, and the guard's final answer (``None`` when the guard refused it). Attack success without
the guard: the label is wrong. With the guard: the final answer is given and wrong (a wrong label the
monitor missed, or a purged input still labelled wrongly); a refused input is no success.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmshield.errors import InputError, require_file
from lmshield.jsonio import dumps, json_ready
from lmshield.progress import write_output
from lmshield.text.triggers import insert_words

if TYPE_CHECKING:
    from lmshield.defenses.sanitizer.guard import Guard, Prediction

MAX_POSITION = 64


@dataclass(frozen=True)
class Outcome:
    """One input under the guard."""

    true_label: int
    label: int
    flagged: bool
    final_label: int | None  # None: refused (flagged and not cleaned, or purging off)
    removed: tuple[str, ...] = ()

    @classmethod
    def from_prediction(cls, prediction: Prediction, true_label: int) -> Outcome:
        return cls(true_label, prediction.label, prediction.flagged, prediction.final_label, prediction.removed)


def _share(hits: int, total: int) -> float:
    """``hits / total``, or NaN (shown as ``-``) when there is nothing to count."""
    return hits / total if total else math.nan


def accuracy(outcomes: Sequence[Outcome]) -> float:
    """Clean accuracy without the guard."""
    return _share(sum(o.label == o.true_label for o in outcomes), len(outcomes))


def guarded_accuracy(outcomes: Sequence[Outcome]) -> float:
    """Clean accuracy with the guard (a refused input counts as wrong)."""
    return _share(sum(o.final_label == o.true_label for o in outcomes), len(outcomes))


def attack_success_rate(outcomes: Sequence[Outcome]) -> float:
    """ASR without the guard: triggered inputs whose label is wrong."""
    return _share(sum(o.label != o.true_label for o in outcomes), len(outcomes))


def guarded_attack_success_rate(outcomes: Sequence[Outcome]) -> float:
    """ASR with the guard: the guard answers, and wrongly (missed by the monitor, or wrong after purging)."""
    return _share(sum(o.final_label is not None and o.final_label != o.true_label for o in outcomes), len(outcomes))


def flag_rate(outcomes: Sequence[Outcome]) -> float:
    """Share flagged by the monitor: the false-positive rate on clean inputs, detection rate on triggered."""
    return _share(sum(o.flagged for o in outcomes), len(outcomes))


def purge_success_rate(outcomes: Sequence[Outcome]) -> float:
    """Among flagged inputs: share the purge cleaned and labelled correctly (NaN when none was flagged)."""
    flagged = [o for o in outcomes if o.flagged]
    return _share(sum(o.final_label == o.true_label for o in flagged), len(flagged))


def trigger_removal_rate(outcomes: Sequence[Outcome], trigger: str) -> float:
    """Among flagged inputs: share whose removed words include every word of ``trigger`` (NaN: none flagged)."""
    flagged = [o for o in outcomes if o.flagged]
    words = set(trigger.split())
    return _share(sum(words <= set(o.removed) for o in flagged), len(flagged))


def _cell(value: float, width: int) -> str:
    """A right-aligned rate, or ``-`` where it does not apply (NaN)."""
    return f"{'-' if math.isnan(value) else f'{value:.3f}':>{width}}"


@dataclass
class TriggerReport:
    trigger: str
    inputs: int
    asr: float
    guarded_asr: float
    detection_rate: float
    purge_success_rate: float
    trigger_removal_rate: float

    @classmethod
    def of(cls, trigger: str, outcomes: Sequence[Outcome]) -> TriggerReport:
        return cls(
            trigger,
            len(outcomes),
            attack_success_rate(outcomes),
            guarded_attack_success_rate(outcomes),
            flag_rate(outcomes),
            purge_success_rate(outcomes),
            trigger_removal_rate(outcomes, trigger),
        )


@dataclass
class GuardEvalReport:
    """Clean accuracy with/without the guard, monitor FPR, ASR with/without the guard, purge, latency."""

    clean_inputs: int
    clean_accuracy: float
    guarded_clean_accuracy: float
    false_positive_rate: float
    asr: float
    guarded_asr: float
    detection_rate: float
    purge_success_rate: float
    triggers: list[TriggerReport] = field(default_factory=list)
    latency_ms: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain values; a rate that does not apply (NaN) is ``None``."""
        return json_ready(asdict(self))

    def save(self, path: str | Path) -> Path:
        out = Path(path)
        write_output(out, dumps(self.to_dict(), indent=2))
        return out

    def table(self) -> str:
        """A plain-text table: one row per trigger, then the totals."""
        lines = [
            f"clean inputs {self.clean_inputs}: accuracy {_cell(self.clean_accuracy, 0)} -> "
            f"{_cell(self.guarded_clean_accuracy, 0)} with the guard, monitor FPR {_cell(self.false_positive_rate, 0)}",
            f"{'trigger':<16}{'inputs':>8}{'ASR':>8}{'ASR+guard':>11}{'flagged':>9}{'purged ok':>11}{'trig. rm':>10}",
        ]
        for r in self.triggers:
            lines.append(
                f"{r.trigger[:15]:<16}{r.inputs:>8}{_cell(r.asr, 8)}{_cell(r.guarded_asr, 11)}"
                f"{_cell(r.detection_rate, 9)}{_cell(r.purge_success_rate, 11)}{_cell(r.trigger_removal_rate, 10)}"
            )
        total = sum(r.inputs for r in self.triggers)
        lines.append(
            f"{'all':<16}{total:>8}{_cell(self.asr, 8)}{_cell(self.guarded_asr, 11)}{_cell(self.detection_rate, 9)}"
            f"{_cell(self.purge_success_rate, 11)}{'':>10}"
        )
        if self.latency_ms:
            lines.append("latency ms/input: " + ", ".join(f"{k} {v:.2f}" for k, v in self.latency_ms.items()))
        return "\n".join(lines)


def summarize(
    clean: Sequence[Outcome],
    triggered: dict[str, Sequence[Outcome]],
    latency_ms: dict[str, float] | None = None,
    settings: dict[str, Any] | None = None,
) -> GuardEvalReport:
    """Turn per-input outcomes into the report (pure: no model involved)."""
    everything = [o for outcomes in triggered.values() for o in outcomes]
    return GuardEvalReport(
        clean_inputs=len(clean),
        clean_accuracy=accuracy(clean),
        guarded_clean_accuracy=guarded_accuracy(clean),
        false_positive_rate=flag_rate(clean),
        asr=attack_success_rate(everything),
        guarded_asr=guarded_attack_success_rate(everything),
        detection_rate=flag_rate(everything),
        purge_success_rate=purge_success_rate(everything),
        triggers=[TriggerReport.of(t, o) for t, o in triggered.items()],
        latency_ms=dict(latency_ms or {}),
        settings=dict(settings or {}),
    )


def triggered_copies(texts: Sequence[str], trigger: str, seed: int, max_position: int = MAX_POSITION) -> list[str]:
    """Each text with ``trigger`` inserted once at a random word position within the first ``max_position``."""
    rng = random.Random(seed)
    return [insert_words(text, trigger, rng, max_position=max_position) for text in texts]


def read_triggers(path: str | Path) -> list[str]:
    """The ``triggers`` list of an attack's ``backdoor.json``; refused for a paraphrase trigger (SynAttack), whose list
    only describes it."""
    hint = "; give the attack's backdoor.json inside it" if (Path(path) / "backdoor.json").is_file() else ""
    file = require_file(path, hint)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from exc
    if isinstance(data, dict) and data.get("paraphraser"):
        raise InputError(
            f"{path}: the trigger of this {data.get('attack', '')} backdoor is a paraphrase ({data['paraphraser']}), "
            "not words: the guard evaluation inserts trigger words, and would insert its description"
        )
    triggers = data.get("triggers") if isinstance(data, dict) else None
    if not isinstance(triggers, list) or not triggers or not all(isinstance(t, str) and t.strip() for t in triggers):
        raise InputError(f"{path}: expected a non-empty list of strings in field 'triggers'")
    return [t.strip() for t in triggers]


def evaluate_guard(
    guard: Guard,
    texts: Sequence[str],
    labels: Sequence[int],
    triggers: Sequence[str],
    *,
    seed: int = 0,
    max_position: int = MAX_POSITION,
) -> GuardEvalReport:
    """Run the protocol: clean pass, then each trigger inserted into the correctly classified inputs."""
    if len(texts) != len(labels):
        raise InputError(f"{len(texts)} texts but {len(labels)} labels")
    if not texts or not triggers:
        raise InputError("the guard evaluation needs test texts and at least one trigger")
    texts = list(texts)
    started = time.perf_counter()
    guard.classifier.classify(texts, guard.batch_size)
    plain_s = time.perf_counter() - started
    started = time.perf_counter()
    clean_predictions = guard.predict(texts)
    guarded_s = time.perf_counter() - started
    clean = [Outcome.from_prediction(p, y) for p, y in zip(clean_predictions, labels, strict=True)]
    correct = [i for i, o in enumerate(clean) if o.label == o.true_label]
    triggered: dict[str, list[Outcome]] = {}
    triggered_s, triggered_count = 0.0, 0
    for number, trigger in enumerate(triggers):
        poisoned = triggered_copies([texts[i] for i in correct], trigger, seed + number, max_position)
        started = time.perf_counter()
        predictions = guard.predict(poisoned)
        triggered_s += time.perf_counter() - started
        triggered_count += len(poisoned)
        triggered[trigger] = [Outcome.from_prediction(p, labels[i]) for p, i in zip(predictions, correct, strict=True)]
    latency = {
        "classifier": 1000 * plain_s / len(texts),
        "guard_clean": 1000 * guarded_s / len(texts),
        "guard_triggered": 1000 * triggered_s / max(1, triggered_count),
    }
    settings = {
        "seed": seed,
        "max_position": max_position,
        "threshold": guard.threshold,
        "thresholds": [round(float(t), 4) for t in guard.thresholds_],  # per PV, after any calibration
        "max_removed": guard.max_removed,
    }
    return summarize(clean, triggered, latency, settings)
