"""Baseline defenses on the PSIM evaluation's victims, as rows of the same table.

- ``strip``: STRIP's perturbation entropy on the victim, a detector like PSIM: calibrated to the evaluation's
  target FRR (5 % when none is set) on held-out dev texts, scored with the release's rules, with FRR, FAR and
  ROC-AUC.
- ``onion``: ONION removes suspicious words with a causal LM (``onion_lm``, a path) before the victim answers.
- ``paraphrase-back`` / ``paraphrase-scpn``: the victim answers the precomputed back-translated or SCPN
  paraphrases of the task's test set (``../shared/data``); only for a BadNet ``mn`` release with target 0,
  the attack those files were made for.

ONION and the paraphrases change the input instead of refusing it, so their rows have no FRR, FAR or ROC-AUC,
and their *defended* columns are the victim's accuracy and ASR on the changed inputs.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmshield.errors import InputError
from lmshield.evaluation.psim_eval import PSIMRow, attack_success_rate, clean_accuracy, flip_asr, psim_row

DEFAULT_FRR = 0.05


@dataclass(frozen=True)
class RowContext:
    """What a baseline's row may read besides the victim: its name, the task and the held-out dev texts."""

    name: str
    task_dir: Path
    dev_texts: Sequence[str]
    dev_labels: Sequence[int]
    target_frr: float | None
    seed: int
    device: str | None
    progress: bool


@dataclass(frozen=True)
class Baseline:
    """A baseline defense: how its row is made, which :class:`BaselineSettings` fields it reads (they name its
    saved rows) and whether it answers precomputed inputs that fit only some tasks and attacks."""

    row: Callable[[VictimAnswers, BaselineSettings, RowContext], PSIMRow]
    settings: tuple[str, ...] = ()
    precomputed: bool = False


BASELINE_REGISTRY: dict[str, Baseline] = {}  # filled below the row functions; register_baseline adds more


def register_baseline(name: str, baseline: Baseline) -> None:
    """Add a baseline under ``name``: the one place a new baseline touches (its settings aside)."""
    BASELINE_REGISTRY[name] = baseline


@dataclass(frozen=True)
class BaselineSettings:
    """Which baselines run, on which victims (``None``: every evaluated strategy), and their settings."""

    names: tuple[str, ...] = ("strip",)
    strategies: tuple[str, ...] | None = None
    onion_lm: str | None = None
    onion_threshold: float = 0.0
    onion_max_drop: float | None = None  # set: calibrate ONION's threshold on the labelled dev texts instead
    strip_copies: int = 20
    strip_ratio: float = 0.25

    def __post_init__(self) -> None:
        unknown = [name for name in self.names if name not in BASELINE_REGISTRY]
        if unknown:
            raise InputError(f"unknown baseline {unknown[0]!r}: use {', '.join(BASELINE_REGISTRY)}")
        if "onion" in self.names and not self.onion_lm:
            raise InputError("the onion baseline needs a causal language model: give its path (--onion-lm)")
        if "onion" in self.names and not Path(self.onion_lm).is_dir():  # before any victim is trained
            problem = "is a file, not a model folder" if Path(self.onion_lm).exists() else "no such folder"
            raise InputError(f"--onion-lm {self.onion_lm}: {problem} (ONION's LM is loaded from a path)")
        if self.onion_max_drop is not None and not 0 <= self.onion_max_drop < 1:
            raise InputError(f"the ONION budget (--onion-max-drop) must lie in [0, 1), got {self.onion_max_drop}")

    def applicable(self, strategy: str, task_dir: str | Path, manifest: Any) -> list[str]:
        """The baselines that run on this victim: all named, but the paraphrases only where their files fit."""
        if self.strategies is not None and strategy not in self.strategies:
            return []
        skipped = self.skipped(task_dir, manifest)
        return [name for name in self.names if name not in skipped]

    def skipped(self, task_dir: str | Path, manifest: Any) -> dict[str, str]:
        """The paraphrase baselines asked for that cannot run here, each with the reason."""
        reasons = {}
        for name in (n for n in self.names if BASELINE_REGISTRY[n].precomputed):
            if not _paraphrases_fit(manifest.attack, manifest.triggers, manifest.target_label):
                reasons[name] = "its precomputed files hold BadNet 'mn' inputs for target 0 only"
            elif not _has_paraphrases(task_dir, name):
                reasons[name] = f"{task_dir} has no matching precomputed paraphrase file"
        return reasons

    def key(self, name: str) -> str:
        """``name`` and eight hex digits of that baseline's own settings: saved rows of other settings are not
        reused, and adding a baseline or a victim keeps the rows already done."""
        values = {field: getattr(self, field) for field in BASELINE_REGISTRY[name].settings}
        return f"{name}/{hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:8]}"


@dataclass(frozen=True)
class VictimAnswers:
    """One victim on the evaluation's inputs: what a baseline row compares against."""

    attack: str
    strategy: str
    dataset: str
    target_label: int
    victim: Any  # a classifier with predict(texts) and classify(texts).probs
    clean_texts: list[str]
    clean_labels: list[int]
    clean_predicted: list[int]
    poisoned_texts: list[str]
    poisoned_predicted: list[int]
    source_predicted: list[int]
    source_labels: list[int]

    def shared(self) -> dict[str, Any]:
        """The arguments of :func:`psim_row` that describe the victim (the detector's scores are the rest)."""
        return {
            "attack": self.attack,
            "strategy": self.strategy,
            "dataset": self.dataset,
            "clean_predicted": self.clean_predicted,
            "clean_labels": self.clean_labels,
            "poisoned_predicted": self.poisoned_predicted,
            "target_label": self.target_label,
            "source_predicted": self.source_predicted,
            "source_labels": self.source_labels,
        }


def baseline_row(
    name: str,
    answers: VictimAnswers,
    settings: BaselineSettings,
    *,
    task_dir: str | Path,
    dev_texts: Sequence[str],
    target_frr: float | None,
    dev_labels: Sequence[int] = (),
    seed: int = 0,
    device: str | None = None,
    progress: bool = False,
) -> PSIMRow:
    """The row of one baseline (see :meth:`BaselineSettings.applicable` for which ones fit); ``dev_labels``
    (of ``dev_texts``) calibrate ONION when ``settings.onion_max_drop`` is set."""
    if name not in BASELINE_REGISTRY:
        raise InputError(f"unknown baseline {name!r}: use {', '.join(BASELINE_REGISTRY)}")
    context = RowContext(name, Path(task_dir), dev_texts, dev_labels, target_frr, seed, device, progress)
    return BASELINE_REGISTRY[name].row(answers, settings, context)


def strip_row(
    answers: VictimAnswers,
    settings: BaselineSettings,
    dev_texts: Sequence[str],
    target_frr: float,
    seed: int,
    progress: bool,
) -> PSIMRow:
    """STRIP on the victim: replacement words from the first half of ``dev_texts``, calibrated on the rest."""
    from lmshield.defenses.baselines import STRIP

    half = len(dev_texts) // 2
    if half < 1:
        raise InputError("STRIP needs at least two held-out dev texts (word pool and calibration)")
    strip = STRIP(
        answers.victim, copies=settings.strip_copies, replace_ratio=settings.strip_ratio, seed=seed, progress=progress
    ).fit(list(dev_texts[:half]))
    strip.calibrate(list(dev_texts[half:]), target_frr)
    return psim_row(
        **answers.shared(),
        clean_scores=strip.score(answers.clean_texts).tolist(),
        poisoned_scores=strip.score(answers.poisoned_texts).tolist(),
        threshold=float(strip.threshold_),
        defense="strip",
    )


def onion_row(
    answers: VictimAnswers,
    settings: BaselineSettings,
    device: str | None,
    progress: bool,
    dev: tuple[Sequence[str], Sequence[int]] = ((), ()),
) -> PSIMRow:
    """ONION in front of the victim: it answers the texts with the suspicious words removed. With
    ``settings.onion_max_drop``, its threshold is calibrated first on the labelled ``dev`` texts, for this victim."""
    from lmshield.defenses.baselines import ONION

    onion = ONION(_causal_lm(str(settings.onion_lm), device), threshold=settings.onion_threshold, progress=progress)
    if settings.onion_max_drop is not None:
        onion.calibrate(list(dev[0]), list(dev[1]), answers.victim.predict, settings.onion_max_drop)
    clean = answers.victim.predict(onion.clean(answers.clean_texts))
    poisoned = answers.victim.predict(onion.clean(answers.poisoned_texts))
    flips = flip_asr(answers.source_predicted, answers.source_labels, poisoned, answers.target_label)
    defended = clean_accuracy(clean, answers.clean_labels)
    return _changed_input_row(answers, "onion", defended, poisoned, flips, onion.threshold_in_use)


@functools.lru_cache(maxsize=2)
def _causal_lm(lm: str, device: str | None) -> tuple[Any, Any]:
    """One ONION language model in memory for every victim of an evaluation."""
    from lmshield.defenses.baselines import load_causal_lm

    return load_causal_lm(lm, device)


def _paraphrases_fit(attack: str, triggers: Sequence[str], target_label: int) -> bool:
    """The precomputed paraphrases hold BadNet ``mn`` triggered label-1 sentences: they fit that attack only."""
    return attack == "badnet" and list(triggers) == ["mn"] and target_label == 0


def _has_paraphrases(task_dir: str | Path, name: str) -> bool:
    from lmshield.defenses.baselines.paraphrase import paraphrase_files

    return all((Path(task_dir) / file).is_file() for file in paraphrase_files(name.removeprefix("paraphrase-")))


def paraphrase_row(answers: VictimAnswers, task_dir: str | Path, name: str) -> PSIMRow:
    """The victim on the paraphrased test set: the first texts of each file, as many as the evaluation's."""
    from lmshield.defenses.baselines import load_paraphrased

    para = load_paraphrased(task_dir, name.removeprefix("paraphrase-"))
    count, poisoned_count = len(answers.clean_texts), len(answers.poisoned_texts)
    clean = answers.victim.predict(para.clean_texts[:count])
    poisoned = answers.victim.predict(para.poisoned_texts[:poisoned_count])
    accuracy = clean_accuracy(clean, para.clean_labels[:count])
    row = _changed_input_row(answers, name, accuracy, poisoned, math.nan)  # sources are not aligned: no flip ASR
    row.extra["trigger_kept"] = para.trigger_kept
    return row


def _changed_input_row(
    answers: VictimAnswers,
    defense: str,
    defended_accuracy: float,
    poisoned: Sequence[int],
    defended_flip: float,
    threshold: float = math.nan,
) -> PSIMRow:
    sources = (answers.source_predicted, answers.source_labels, answers.poisoned_predicted, answers.target_label)
    return PSIMRow(
        attack=answers.attack,
        strategy=answers.strategy,
        dataset=answers.dataset,
        clean_accuracy=clean_accuracy(answers.clean_predicted, answers.clean_labels),
        asr=attack_success_rate(answers.poisoned_predicted, answers.target_label),
        clean_accuracy_psim=defended_accuracy,
        asr_psim=attack_success_rate(poisoned, answers.target_label),
        frr=math.nan,
        far=math.nan,
        auroc=math.nan,
        threshold=threshold,
        flip_asr=flip_asr(*sources),
        flip_asr_psim=defended_flip,
        defense=defense,
        clean_count=len(answers.clean_predicted),
        triggered_count=len(answers.poisoned_predicted),
    )


def _strip(answers: VictimAnswers, settings: BaselineSettings, context: RowContext) -> PSIMRow:
    frr = DEFAULT_FRR if context.target_frr is None else context.target_frr
    return strip_row(answers, settings, context.dev_texts, frr, context.seed, context.progress)


def _onion(answers: VictimAnswers, settings: BaselineSettings, context: RowContext) -> PSIMRow:
    dev = (context.dev_texts, context.dev_labels)
    return onion_row(answers, settings, context.device, context.progress, dev=dev)


def _paraphrase(answers: VictimAnswers, settings: BaselineSettings, context: RowContext) -> PSIMRow:
    return paraphrase_row(answers, context.task_dir, context.name)


register_baseline("strip", Baseline(_strip, ("strip_copies", "strip_ratio")))
register_baseline("onion", Baseline(_onion, ("onion_lm", "onion_threshold", "onion_max_drop")))
register_baseline("paraphrase-back", Baseline(_paraphrase, precomputed=True))
register_baseline("paraphrase-scpn", Baseline(_paraphrase, precomputed=True))
BASELINES = tuple(BASELINE_REGISTRY)  # the built-in ones, in the order the table lists them
