"""PSIM evaluation: the release's scoring and the detection view, as pure functions, plus the protocol.

Release scoring: a flagged poisoned input counts as defended, a flagged clean input as an error, so clean
accuracy and ASR *with* PSIM must be read together. Detection view: FRR (clean inputs flagged), FAR
(poisoned inputs let through) and the ROC-AUC of the PSIM score (poisoned = positive).

The protocol (:func:`evaluate_release`) tunes victims on a clean task from released weights, fits PSIM once
per release and fills one :class:`PSIMRow` per victim strategy. It reads the attack's ground truth
(``backdoor.json``) to build triggered test inputs; the defense itself never sees it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmshield.defenses.psim.thresholds import check_target_frr, flag_scores
from lmshield.errors import InputError
from lmshield.evaluation.detection import roc_auc, wilson_interval
from lmshield.jsonio import dumps, json_ready, nan_if_none
from lmshield.locks import holds
from lmshield.progress import PROGRESS_JSON, content_digest, read_progress, stamp, write_progress, write_text

if TYPE_CHECKING:
    from lmshield.evaluation.baselines_eval import BaselineSettings

logger = logging.getLogger(__name__)

STRATEGIES = ("full", "lora", "prompt", "ptuning", "prefix")
# the shares a row holds, by the inputs they are counted over (flip ASR counts a subset: no interval)
CLEAN_SHARES = ("clean_accuracy", "clean_accuracy_psim", "frr")
TRIGGERED_SHARES = ("asr", "asr_psim", "far")


# -- pure metrics ------------------------------------------------------------------------------------------------


def _mean(values: Sequence[bool]) -> float:
    return sum(map(bool, values)) / len(values) if len(values) else math.nan


def clean_accuracy(predicted: Sequence[int], labels: Sequence[int]) -> float:
    """Share of clean inputs labelled correctly."""
    _same_length(predicted, labels)
    return _mean([p == y for p, y in zip(predicted, labels, strict=True)])


def attack_success_rate(predicted: Sequence[int], target_label: int) -> float:
    """Share of triggered non-target inputs labelled as the target."""
    return _mean([p == target_label for p in predicted])


def defended_clean_accuracy(predicted: Sequence[int], labels: Sequence[int], flagged: Sequence[bool]) -> float:
    """Release scoring: a clean input counts as correct only when PSIM passes it and the victim is right."""
    _same_length(predicted, labels, flagged)
    return _mean([p == y and not f for p, y, f in zip(predicted, labels, flagged, strict=True)])


def defended_asr(predicted: Sequence[int], flagged: Sequence[bool], target_label: int) -> float:
    """Release scoring: a triggered input succeeds only when PSIM passes it and the victim says the target."""
    _same_length(predicted, flagged)
    return _mean([p == target_label and not f for p, f in zip(predicted, flagged, strict=True)])


def flip_asr(
    source_predicted: Sequence[int],
    source_labels: Sequence[int],
    poisoned_predicted: Sequence[int],
    target_label: int,
    flagged: Sequence[bool] | None = None,
) -> float:
    """ASR counted only where the trigger changed the answer: of the non-target inputs the victim labels
    correctly without the trigger, the share it labels as the target with the trigger (and, given
    ``flagged``, that PSIM passes). Plain ASR also counts the victim's ordinary errors on those inputs."""
    flagged = [False] * len(poisoned_predicted) if flagged is None else flagged
    _same_length(source_predicted, source_labels, poisoned_predicted, flagged)
    pairs = zip(source_predicted, source_labels, poisoned_predicted, flagged, strict=True)
    return _mean([p == target_label and not f for s, y, p, f in pairs if s == y])


def frr_far(clean_flagged: Sequence[bool], poisoned_flagged: Sequence[bool]) -> tuple[float, float]:
    """(false-rejection rate: clean inputs flagged, false-acceptance rate: poisoned inputs passed)."""
    return _mean(clean_flagged), _mean([not f for f in poisoned_flagged])


def score_auroc(clean_scores: Sequence[float], poisoned_scores: Sequence[float]) -> float:
    """ROC-AUC of the poison score, poisoned inputs positive (ties count one half)."""
    truth = [False] * len(clean_scores) + [True] * len(poisoned_scores)
    return roc_auc(truth, [*map(float, clean_scores), *map(float, poisoned_scores)])


@dataclass(frozen=True)
class SweepPoint:
    threshold: float
    frr: float
    far: float


def threshold_sweep(
    clean_scores: Sequence[float], poisoned_scores: Sequence[float], thresholds: Sequence[float] | None = None
) -> list[SweepPoint]:
    """FRR and FAR at each threshold (flag: score > threshold); default: every distinct score and -inf."""
    if thresholds is None:
        thresholds = [-math.inf, *sorted({*map(float, clean_scores), *map(float, poisoned_scores)})]
    points = []
    for t in thresholds:
        frr, far = frr_far(flag_scores(clean_scores, t), flag_scores(poisoned_scores, t))
        points.append(SweepPoint(float(t), frr, far))
    return points


@dataclass
class PSIMRow:
    """One attack x strategy x dataset x defense result.

    ``defense`` is ``psim`` or a baseline (:mod:`lmshield.evaluation.baselines_eval`); the ``*_psim`` columns
    hold the numbers with that defense in front of the victim. ``clean_count`` and ``triggered_count``: the
    test inputs the shares are counted over (0 in rows saved before they were kept).
    """

    attack: str
    strategy: str
    dataset: str
    clean_accuracy: float
    asr: float
    clean_accuracy_psim: float
    asr_psim: float
    frr: float
    far: float
    auroc: float
    threshold: float
    flip_asr: float = math.nan
    flip_asr_psim: float = math.nan
    defense: str = "psim"
    extra: dict[str, Any] = field(default_factory=dict)
    clean_count: int = 0
    triggered_count: int = 0

    def interval(self, share: str) -> tuple[float, float]:
        """The 95 % Wilson interval of one of the row's shares (:data:`CLEAN_SHARES` are counted over the clean
        test inputs, :data:`TRIGGERED_SHARES` over the triggered ones); NaNs where the count is unknown or the
        share does not apply."""
        if share not in CLEAN_SHARES + TRIGGERED_SHARES:
            raise ValueError(f"no interval for {share!r}: use one of {', '.join(CLEAN_SHARES + TRIGGERED_SHARES)}")
        value, total = getattr(self, share), self.clean_count if share in CLEAN_SHARES else self.triggered_count
        if not total or math.isnan(value):
            return math.nan, math.nan
        return wilson_interval(round(value * total), total)

    @property
    def clean_accuracy_drop(self) -> float:
        return self.clean_accuracy - self.clean_accuracy_psim

    def summary(self) -> str:
        """One line for a log: clean accuracy and ASR without and with the defense, and its FRR."""
        from lmshield.reports.psim_report import format_metric

        return (
            f"{self.defense}: clean acc {format_metric(self.clean_accuracy)} -> "
            f"{format_metric(self.clean_accuracy_psim)}, ASR {format_metric(self.asr)} -> "
            f"{format_metric(self.asr_psim)}, FRR {format_metric(self.frr)}"
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain values for JSON; a metric that does not apply (NaN) is ``None``."""
        return json_ready({**asdict(self), "clean_accuracy_drop": self.clean_accuracy_drop})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PSIMRow:
        """Inverse of :meth:`to_dict` (``None`` metrics read back as NaN; the derived drop is recomputed)."""
        metrics = {f.name for f in fields(cls) if f.type == "float"}
        values = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        return cls(**{k: nan_if_none(v) if k in metrics else v for k, v in values.items()})


def psim_row(
    *,
    attack: str,
    strategy: str,
    dataset: str,
    clean_predicted: Sequence[int],
    clean_labels: Sequence[int],
    poisoned_predicted: Sequence[int],
    target_label: int,
    clean_scores: Sequence[float],
    poisoned_scores: Sequence[float],
    threshold: float,
    source_predicted: Sequence[int] | None = None,
    source_labels: Sequence[int] | None = None,
    defense: str = "psim",
) -> PSIMRow:
    """All numbers of one row from victim predictions and a detector's scores (flag: score > threshold).

    ``source_predicted`` / ``source_labels``: the victim's answers on the triggered inputs' clean sources and
    their labels, in the same order; with them the row also holds the flip ASR (see :func:`flip_asr`).
    """
    clean_flags = flag_scores(clean_scores, threshold)
    poison_flags = flag_scores(poisoned_scores, threshold)
    frr, far = frr_far(clean_flags, poison_flags)
    flips = (math.nan, math.nan)
    if source_predicted is not None and source_labels is not None:
        sources = (source_predicted, source_labels, poisoned_predicted, target_label)
        flips = (flip_asr(*sources), flip_asr(*sources, poison_flags))
    return PSIMRow(
        attack=attack,
        strategy=strategy,
        dataset=dataset,
        clean_accuracy=clean_accuracy(clean_predicted, clean_labels),
        asr=attack_success_rate(poisoned_predicted, target_label),
        clean_accuracy_psim=defended_clean_accuracy(clean_predicted, clean_labels, clean_flags),
        asr_psim=defended_asr(poisoned_predicted, poison_flags, target_label),
        frr=frr,
        far=far,
        auroc=score_auroc(clean_scores, poisoned_scores),
        threshold=float(threshold),
        flip_asr=flips[0],
        flip_asr_psim=flips[1],
        defense=defense,
        clean_count=len(clean_predicted),
        triggered_count=len(poisoned_predicted),
    )


def markdown_table(rows: Sequence[PSIMRow]) -> str:
    """The benchmark table: clean acc, ASR without defense, with the defense, clean-acc drop, FRR/FAR/AUROC,
    and the flip ASR without and with the defense; a defense column when baselines are among the rows, and a
    release column when rows of several released models (``extra["release"]``) are."""
    from lmshield.reports.psim_report import format_metric

    with_baselines = any(r.defense != "psim" for r in rows)
    with_releases = len({r.extra.get("release") for r in rows}) > 1
    name = "defense" if with_baselines else "PSIM"
    columns = [*(["release"] if with_releases else []), "attack", "strategy", "dataset"]
    columns += ["defense"] if with_baselines else []
    columns += ["clean acc", "ASR", f"ASR + {name}", f"clean acc + {name}", "drop", "FRR", "FAR", "AUROC"]
    columns += ["flip ASR", f"flip ASR + {name}"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        values = (r.clean_accuracy, r.asr, r.asr_psim, r.clean_accuracy_psim, r.clean_accuracy_drop)
        flips = (r.flip_asr, r.flip_asr_psim)
        metrics = " | ".join(format_metric(v) for v in (*values, r.frr, r.far, r.auroc, *flips))
        names = [*([str(r.extra.get("release", "-"))] if with_releases else []), r.attack, r.strategy, r.dataset]
        names += [r.defense] if with_baselines else []
        lines.append(f"| {' | '.join(names)} | {metrics} |")
    return "\n".join(lines) + "\n"


def _same_length(*seqs: Sequence[Any]) -> None:
    if len({len(s) for s in seqs}) > 1:
        raise ValueError(f"sequences of different lengths: {[len(s) for s in seqs]}")


# -- protocol ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalSettings:
    """How victims are tuned and how PSIM is fitted in :func:`evaluate_release`.

    ``victim`` holds :class:`lmshield.tuning.TuningConfig` overrides for every strategy (the release: lr 2e-3
    for PEFT, 20 epochs, batch 32); ``psim`` holds :class:`PSIMConfig` settings. ``max_*`` cap the data;
    ``target_frr`` (when set) calibrates PSIM's threshold on held-out dev texts instead of the fixed one.
    """

    strategies: tuple[str, ...] = STRATEGIES
    victim: dict[str, Any] = field(default_factory=lambda: {"epochs": 20})
    psim: dict[str, Any] = field(default_factory=dict)
    max_train: int | None = None
    max_dev: int | None = None
    max_test: int | None = None
    psim_train: int | None = None
    target_frr: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        """Refuse bad settings before any model is loaded: an evaluation can run for hours."""
        if not self.strategies:
            raise InputError("name at least one victim strategy")
        for strategy in self.strategies:
            self.victim_config(strategy)
        self.psim_config()
        for name in ("max_train", "max_dev", "max_test", "psim_train"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InputError(f"{name} must be at least 1, got {value}")
        if self.target_frr is not None:
            check_target_frr(self.target_frr)

    def victim_config(self, strategy: str) -> Any:
        """The :class:`lmshield.tuning.TuningConfig` a victim of ``strategy`` is tuned with."""
        from lmshield.tuning import TuningConfig

        return TuningConfig(method=strategy, keep_head=True, seed=self.seed, **self.victim)

    def psim_config(self) -> Any:
        """PSIM's :class:`PSIMConfig` (older settings' names are read too)."""
        from lmshield.defenses.psim.config import PSIMConfig

        return PSIMConfig.from_dict({"seed": self.seed, **self.psim})

    @classmethod
    def preset(cls, name: str = "release") -> EvalSettings:
        """``release`` (paper settings) or ``fast`` (about 20 minutes on 2 CPU cores for 3 attacks)."""
        if name == "release":
            return cls()
        if name == "fast":
            # PSIM on 1,000 texts: 32 steps, so its automatic lr is 1.35e-4 (the release's total update);
            # 500 dev texts leave 10 above a 2 % FRR cut (fewer make calibrate_threshold warn of noise)
            return cls(
                victim={"epochs": 2, "max_length": 64, "batch_size": 32},
                psim={"max_length": 64},
                max_train=480,
                max_dev=500,
                max_test=300,
                psim_train=1000,
            )
        if name == "smoke":
            return cls(
                strategies=("lora",),
                victim={"epochs": 1, "max_length": 32, "batch_size": 16},
                psim={"max_length": 32, "batch_size": 16},
                max_train=48,
                max_dev=16,
                max_test=32,
                psim_train=48,
            )
        raise InputError(f"unknown evaluation preset {name!r}: use release, fast or smoke")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))

    def shared_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` without the strategies: what every strategy's row depends on (a rerun may add some).
        PSIM's settings are given whole, defaults included: a changed default must not resume older scores."""
        shared = {k: v for k, v in self.to_dict().items() if k != "strategies"}
        return {**shared, "psim": self.psim_config().to_dict()}

    def digest(self) -> str:
        """Eight hex digits that name :meth:`shared_dict`, for result folders."""
        return hashlib.sha256(json.dumps(self.shared_dict(), sort_keys=True).encode()).hexdigest()[:8]


class _EvalProgress:
    """What an interrupted :func:`evaluate_release` finished (PSIM's scores, one row per strategy), kept in its
    output folder so that a rerun with the same model, task and settings resumes."""

    def __init__(self, directory: Path | None, identity: dict[str, Any]) -> None:
        self.path = None if directory is None else directory / PROGRESS_JSON
        self.identity = stamp(identity)
        self.state: dict[str, Any] = {"identity": self.identity, "psim": None, "rows": {}}

    def load(self, fresh: bool) -> _EvalProgress:
        if self.path is None or not self.path.is_file():
            return self
        if fresh:
            self.path.unlink()
            return self
        self.state = read_progress(self.path, self.identity, "an evaluation")
        return self

    @property
    def psim(self) -> dict[str, Any] | None:
        return self.state["psim"]

    def row(self, key: str) -> PSIMRow | None:
        saved = self.state["rows"].get(key)
        return None if saved is None else PSIMRow.from_dict(saved)

    def save_psim(self, clean_scores: list[float], poisoned_scores: list[float], threshold: float) -> None:
        self.state["psim"] = {"clean": clean_scores, "poisoned": poisoned_scores, "threshold": threshold}
        self._write()

    def save_row(self, row: PSIMRow, key: str | None = None) -> None:
        self.state["rows"][key or row.strategy] = row.to_dict()
        self._write()

    def _write(self) -> None:
        if self.path is not None:
            write_progress(self.path, self.state)


@dataclass
class ReleaseEvaluation:
    """Rows for one released model on one dataset, plus the PSIM scores behind them."""

    rows: list[PSIMRow]
    clean_scores: list[float]
    poisoned_scores: list[float]
    threshold: float
    seconds: float
    victims: dict[str, Any] = field(default_factory=dict)
    baseline_rows: list[PSIMRow] = field(default_factory=list)
    psim_texts: int | None = None  # the training texts PSIM was fitted on (``psim_train`` only caps them)

    @property
    def all_rows(self) -> list[PSIMRow]:
        """PSIM's rows, then the baselines' (the order of the table)."""
        return [*self.rows, *self.baseline_rows]


@holds("out_dir")
def evaluate_release(
    model_dir: str | Path,
    task_dir: str | Path,
    settings: EvalSettings | None = None,
    *,
    out_dir: str | Path | None = None,
    device: str | None = None,
    progress: bool = True,
    keep_victims: bool | Sequence[str] = False,
    fresh: bool = False,
    baselines: BaselineSettings | None = None,
    psim: str | Path | None = None,
) -> ReleaseEvaluation:
    """Evaluate PSIM on one released model (with ``backdoor.json``) and one task folder (train/dev/test).

    Victims start from the released weights with the released head kept; PSIM is fitted once on the task's
    training texts (labels dropped) and reused across strategies. With ``out_dir``: the fitted PSIM
    (``psim/``), rows (JSON), a Markdown table, the threshold sweep, the confidence histogram and
    ``report.md`` (a readable summary of them all) are written there, and progress is kept after PSIM and
    after each strategy, so a rerun resumes (``fresh`` discards it). ``keep_victims`` (``True`` or some
    strategies) returns those tuned victims too; a rerun tunes them again, as it keeps no weights.
    ``baselines`` adds rows for baseline defenses on the same victims (:mod:`lmshield.evaluation.baselines_eval`).
    ``psim``: the folder of a fitted PSIM that gates the victims instead of one fitted on ``model_dir``; a control
    release (``poison --control``) behind the backdoored release's PSIM gives what PSIM lets through to the
    target when no backdoor is there.
    """
    from lmshield.evaluation.baselines_eval import baseline_row

    settings = settings or EvalSettings()
    started = time.perf_counter()
    gate = None if psim is None else gate_identity(psim)  # a missing gate is said before any work
    data = _EvalData.load(model_dir, task_dir, settings, device)
    manifest, task = data.manifest, data.task
    out = None if out_dir is None else Path(out_dir)
    identity = {
        "model": str(Path(model_dir).resolve()),
        "manifest": manifest.to_dict(),
        "task": str(task.resolve()),
        "data": content_digest([[split.texts, split.labels] for split in (data.train, data.dev, data.test)]),
        **({} if gate is None else {"gate": gate}),
    }
    saved = _EvalProgress(out, {**identity, "settings": settings.shared_dict()}).load(fresh)
    if saved.psim is None:
        if psim is None:
            scored = _fit_psim(model_dir, data, settings, out, device, progress)
        else:
            scored = _gate_scores(psim, data, device, progress)
        saved.save_psim(*scored)
    else:
        logger.info("resuming: PSIM's scores from %s", out)
    clean_scores, poisoned_scores = saved.psim["clean"], saved.psim["poisoned"]
    threshold = float(saved.psim["threshold"])

    for name, reason in (baselines.skipped(task, manifest) if baselines else {}).items():
        logger.warning("%s: baseline %s skipped: %s", manifest.attack, name, reason)
    rows, victims, extra_rows = [], {}, []
    for strategy in settings.strategies:
        kept = keep_victims is True or (not isinstance(keep_victims, bool) and strategy in keep_victims)
        names = [] if baselines is None else baselines.applicable(strategy, task, manifest)
        keys = [f"{strategy}/{baselines.key(name)}" for name in names] if baselines else []
        done = [None] if kept else [saved.row(key) for key in (strategy, *keys)]
        if all(row is not None for row in done):
            logger.info("resuming: %s / %s already evaluated", manifest.attack, strategy)
            rows.append(done[0])
            extra_rows.extend(done[1:])
            continue
        answers = data.victim_answers(model_dir, strategy, settings, device, progress)
        row = psim_row(
            **answers.shared(),
            clean_scores=clean_scores,
            poisoned_scores=poisoned_scores,
            threshold=threshold,
        )
        logger.info("%s / %s: %s", manifest.attack, strategy, row.summary())
        saved.save_row(row)
        rows.append(row)
        for key, name in zip(keys, names, strict=True):
            extra = baseline_row(
                name, answers, baselines, task_dir=task, dev_texts=data.dev.texts, dev_labels=data.dev.labels,
                target_frr=settings.target_frr, seed=settings.seed, device=device, progress=progress,
            )  # fmt: skip
            logger.info("%s / %s: %s", manifest.attack, strategy, extra.summary())
            saved.save_row(extra, key)
            extra_rows.append(extra)
        if kept:
            victims[strategy] = answers.victim
    psim_texts = len(data.psim_texts) if psim is None else None
    result = ReleaseEvaluation(rows, clean_scores, poisoned_scores, threshold, 0.0, victims, extra_rows, psim_texts)
    result.seconds = time.perf_counter() - started
    if out is not None:
        _write_outputs(out, result, manifest, settings, str(model_dir), gate="" if psim is None else str(psim))
    return result


@dataclass
class _EvalData:
    """The texts one evaluation reads: task splits (capped by the settings) and the triggered test inputs."""

    manifest: Any
    task: Path
    train: Any
    dev: Any
    test: Any
    triggered: Any
    sources: list[int]  # the test indices the triggered inputs were made from, in their order
    psim_texts: list[str]  # PSIM's training texts: the task's, up to ``psim_train``

    @classmethod
    def load(cls, model_dir: str | Path, task_dir: str | Path, settings: EvalSettings, device: str | None) -> _EvalData:
        from lmshield.attacks.poisoning import PoisonManifest, make_poisoner, triggered_test_set
        from lmshield.tuning import read_labelled

        manifest = PoisonManifest.load(model_dir)
        if manifest.planted is False:
            logger.warning(
                "%s: its own check says %s; the evaluation measures a model without a working backdoor",
                model_dir, manifest.verdict(),
            )  # fmt: skip
        task = Path(task_dir)
        whole = read_labelled(task / "train.json")
        train = whole.head(settings.max_train)
        dev = read_labelled(task / "dev.json", label_names=train.label_names).head(settings.max_dev)
        test = read_labelled(task / "test.json", label_names=train.label_names).head(settings.max_test)
        poisoner = make_poisoner(manifest.config, device=device)
        rebuilt = getattr(getattr(poisoner, "paraphraser", None), "name", None)
        if manifest.paraphraser is not None and rebuilt != manifest.paraphraser:
            raise InputError(  # the test set would carry a trigger that was never planted
                f"{model_dir} was poisoned with the paraphraser {manifest.paraphraser!r}, which its settings do not "
                f"rebuild (they give {rebuilt!r}); poison with a paraphraser named by path or hub id to evaluate it"
            )
        triggered = triggered_test_set(test, poisoner, manifest.target_label, settings.seed + 7)
        sources = [i for i, y in enumerate(test.labels) if y != manifest.target_label]
        return cls(manifest, task, train, dev, test, triggered, sources, whole.texts[: settings.psim_train])

    def victim_answers(
        self, model_dir: str | Path, strategy: str, settings: EvalSettings, device: str | None, progress: bool
    ) -> Any:
        """Tune one victim from the released weights and record its answers on clean and triggered inputs."""
        from lmshield.evaluation.baselines_eval import VictimAnswers
        from lmshield.tuning import tune

        config = settings.victim_config(strategy)
        logger.info("%s: tuning the %s victim (%d texts, %d epochs)", self.manifest.attack, strategy,
                    len(self.train), config.epochs)  # fmt: skip
        victim = tune(model_dir, self.train, self.dev, config, device=device, progress=progress).classifier
        clean_predicted = victim.predict(self.test.texts)
        return VictimAnswers(
            attack=self.manifest.attack,
            strategy=strategy,
            dataset=self.task.name,
            target_label=self.manifest.target_label,
            victim=victim,
            clean_texts=self.test.texts,
            clean_labels=self.test.labels,
            clean_predicted=clean_predicted,
            poisoned_texts=self.triggered.texts,
            poisoned_predicted=victim.predict(self.triggered.texts),
            source_predicted=[clean_predicted[i] for i in self.sources],
            source_labels=self.triggered.labels,
        )


def _fit_psim(
    model_dir: str | Path,
    data: _EvalData,
    settings: EvalSettings,
    out: Path | None,
    device: str | None,
    progress: bool,
) -> tuple[list[float], list[float], float]:
    """Fit PSIM on the task's training texts (labels dropped), calibrate it if asked, score the test inputs."""
    from lmshield.defenses.psim import PSIM

    psim_texts = data.psim_texts
    psim = PSIM.from_config(settings.psim_config(), device=device, progress=progress)
    logger.info("%s: fitting PSIM (%s, %d texts)", data.manifest.attack, psim.method, len(psim_texts))
    psim.fit(model_dir, psim_texts, data.manifest.num_labels)
    if settings.target_frr is not None:
        psim.calibrate(data.dev.texts, settings.target_frr)
    if out is not None:
        psim.save_pretrained(out / "psim")
    return _test_scores(psim, data)


def _test_scores(psim: Any, data: _EvalData) -> tuple[list[float], list[float], float]:
    """A fitted PSIM's scores of the clean and the triggered test inputs, and its threshold."""
    return psim.score(data.test.texts).tolist(), psim.score(data.triggered.texts).tolist(), psim.threshold_


def gate_identity(psim: str | Path) -> dict[str, str]:
    """Where a gating PSIM is and what its ``psim.json`` holds (a rerun behind another PSIM must not resume);
    :class:`InputError` when the folder holds no fitted PSIM."""
    from lmshield.defenses.psim.detector import PSIM_JSON

    path = Path(psim) / PSIM_JSON
    if not path.is_file():
        raise InputError(f"{psim}: no fitted PSIM there ({PSIM_JSON} missing)")
    return {"path": str(Path(psim).resolve()), "psim_json": hashlib.sha256(path.read_bytes()).hexdigest()}


def _gate_scores(
    psim_dir: str | Path, data: _EvalData, device: str | None, progress: bool
) -> tuple[list[float], list[float], float]:
    """Score the test inputs with a PSIM fitted elsewhere, at its own threshold."""
    from lmshield.defenses.psim import PSIM

    psim = PSIM.from_pretrained(psim_dir, device=device, progress=progress)
    logger.info("%s: victims gated by the PSIM in %s", data.manifest.attack, psim_dir)
    return _test_scores(psim, data)


def _write_outputs(
    out: Path, result: ReleaseEvaluation, manifest: Any, settings: EvalSettings, model: str, gate: str = ""
) -> None:
    """rows.json, table.md, sweep.json, the confidence histogram and report.md."""
    every_row = result.all_rows
    write_text(out / "rows.json", dumps([r.to_dict() for r in every_row], indent=2))
    write_text(out / "table.md", markdown_table(every_row))
    sweep = threshold_sweep(result.clean_scores, result.poisoned_scores)
    write_text(out / "sweep.json", dumps([asdict(p) for p in sweep]))
    from lmshield.reports.plots import plot_score_histogram

    kind = settings.psim_config().score_kind
    read = "top probability" if kind == "probability" else "normalised top probability"
    plot_score_histogram(
        result.clean_scores, result.poisoned_scores, result.threshold, out / "psim_confidence.png",
        title=f"PSIM: {manifest.attack}", xlabel=f"PSIM score ({read})",
    )  # fmt: skip
    if result.rows:
        from lmshield.reports.psim_report import write_psim_report

        write_psim_report(
            out, rows=result.rows, sweep=sweep, manifest=manifest.to_dict(), settings=settings.to_dict(),
            threshold=result.threshold, model=model, baselines=result.baseline_rows, release_check=manifest.verdict(),
            psim_texts=result.psim_texts, gate=gate,
        )  # fmt: skip
