"""Guard: a tuned classifier watched by LMSanitator's monitor, with batched purging of flagged inputs.

``Guard(classifier, pvs).predict(texts)`` classifies every text and, from the same forward pass, checks
the watched output against the PVs a scan found. A flagged input is purged (words deleted until the
monitor no longer flags it) and re-labelled; an input that cannot be cleaned is reported as refused,
never passed on with its suspicious label.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from lmshield.defenses.sanitizer.monitor import (
    CALIBRATION_CEILING,
    CALIBRATION_MARGIN,
    CALIBRATION_QUANTILE,
    DEFAULT_THRESHOLD,
    Monitor,
    MonitorResult,
    check_calibration,
)
from lmshield.defenses.sanitizer.purge import PURGE_STRATEGIES
from lmshield.defenses.sanitizer.result import ScanResult
from lmshield.errors import InputError, check_bool, check_whole, reject_unknown_params, require_file
from lmshield.files import readable_as_umask
from lmshield.progress import atomic_write
from lmshield.text.inputs import as_texts
from lmshield.tuning.classifier import TunedClassifier

logger = logging.getLogger(__name__)

CALIBRATION_FORMAT = "lmshield-guard-calibration"


@dataclass(frozen=True)
class Prediction:
    """The guarded prediction for one text.

    ``label``/``probs`` are the classifier's answer on the text as given. When ``flagged``, purging ran:
    ``cleaned`` says whether a variant the monitor accepts was found (``purged_text``, ``removed`` words,
    ``purged_label``/``purged_probs``). ``final_label`` is what the guard answers: the label of a clean
    input, the purged label of a cleaned one, ``None`` (refused) otherwise.
    """

    text: str
    label: int
    label_name: str
    probs: tuple[float, ...]
    flagged: bool
    match: float  # highest share of matching signs with any PV
    pv_index: int | None
    cleaned: bool = False
    purged_text: str | None = None
    removed: tuple[str, ...] = ()
    purged_label: int | None = None
    purged_label_name: str | None = None
    purged_probs: tuple[float, ...] | None = None

    @property
    def status(self) -> str:
        if not self.flagged:
            return "clean"
        return "purged" if self.cleaned else "refused"

    @property
    def final_label(self) -> int | None:
        if not self.flagged:
            return self.label
        return self.purged_label if self.cleaned else None

    @property
    def final_label_name(self) -> str | None:
        if not self.flagged:
            return self.label_name
        return self.purged_label_name if self.cleaned else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "status": self.status,
            "final_label": self.final_label,
            "label_name": self.final_label_name,  # of the guard's answer, as in every predict mode: null if refused
            "unguarded_label": self.label,  # the classifier's own answer on the text as given: maybe the backdoor's
            "unguarded_label_name": self.label_name,
            "probs": list(self.probs),
            "flagged": self.flagged,
            "match": self.match,
            "pv_index": self.pv_index,
            "cleaned": self.cleaned,
            "purged_text": self.purged_text,
            "removed": list(self.removed),
            "purged_label": self.purged_label,
            "purged_label_name": self.purged_label_name,
            "purged_probs": None if self.purged_probs is None else list(self.purged_probs),
        }


GUARD_SEEDS = 24  # seeds of the default search scan, which found every trigger of a six-trigger POR model


class Guard:
    """A tuned classifier guarded by output monitoring and input purging.

    ``threshold``: flag when the share of matching signs with any PV exceeds it (0.8 in the paper).
    ``purge``: purge flagged inputs (else they are refused). ``max_removed``: words the greedy purge may
    delete. ``purge_strategy``: ``batched`` (every single-word deletion in shared batches, then greedy) or
    ``sequential`` (the release's left-to-right loop, one forward per word, for comparison).
    ``batch_size``: texts per forward pass, candidates included.
    """

    def __init__(
        self,
        classifier: TunedClassifier,
        pvs: torch.Tensor,
        *,
        threshold: float = DEFAULT_THRESHOLD,
        purge: bool = True,
        max_removed: int = 3,
        purge_strategy: str = "batched",
        batch_size: int = 64,
        progress: bool = False,
    ) -> None:
        if not isinstance(classifier, TunedClassifier):
            raise InputError(f"classifier must be a TunedClassifier, got {type(classifier).__name__}")
        monitor = Monitor(pvs, threshold)  # a float (K, hidden) tensor of finite PVs, a threshold in [0, 1)
        if pvs.shape[1] != classifier.hidden_size:
            raise InputError(
                f"PVs of shape {tuple(pvs.shape)} do not fit the classifier's hidden size {classifier.hidden_size}"
            )
        check_whole({"max_removed": max_removed, "batch_size": batch_size})
        check_bool({"purge": purge, "progress": progress})
        if not isinstance(purge_strategy, str) or purge_strategy not in PURGE_STRATEGIES:
            raise InputError(f"unknown purge strategy {purge_strategy!r}: use {' or '.join(PURGE_STRATEGIES)}")
        self.classifier = classifier.eval()
        self.monitor = monitor
        self._given = {"pvs": pvs, "threshold": threshold}  # as passed: scikit-learn's clone checks identity
        self.purge = purge
        self.max_removed = max_removed
        self.purge_strategy = purge_strategy
        self.batch_size = batch_size
        self.progress = progress
        if self.monitor.num_pvs == 0:
            logger.warning("the guard has no PVs (the scan found the encoder clean): nothing will be flagged")
        if classifier.method.changes_encoder:
            logger.warning(
                "%s tuning changes the encoder; the PVs describe the original encoder's outputs",
                classifier.config.method,
            )

    @property
    def threshold(self) -> float:
        """The base threshold every PV starts at (calibration may raise some PVs above it)."""
        return self.monitor.threshold

    @property
    def pvs(self) -> torch.Tensor:
        return self.monitor.pvs

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor's parameters (scikit-learn's estimator protocol)."""
        names = ("classifier", "purge", "max_removed", "purge_strategy", "batch_size", "progress")
        return {**{name: getattr(self, name) for name in names}, **self._given}

    def set_params(self, **params: Any) -> Guard:
        """Change parameters (validated as in the constructor). A new ``threshold`` or ``pvs`` drops the
        calibration, which was made for the old ones: calibrate again afterwards."""
        reject_unknown_params(self, params)
        monitor = self.monitor
        checked = type(self)(**{**self.get_params(), **params})  # bad values fail here
        vars(self).update(vars(checked))
        if "threshold" not in params and "pvs" not in params:
            self.monitor = monitor  # keep the calibration
        return self

    @classmethod
    def from_scan(
        cls, classifier: TunedClassifier, scan: ScanResult, *, any_scan: bool = False, **kwargs: Any
    ) -> Guard:
        """A guard with a scan's PVs. The scan must watch the position the classifier reads, and be a scan of the
        classifier's base encoder (same weights fingerprint): another model's PVs, or a clean verdict about
        another model, would leave the guard blind. ``any_scan`` skips that check (a re-saved copy of the same
        weights, say), with a warning."""
        if scan.position != str(classifier.position):
            raise InputError(
                f"the scan watched position {scan.position!r} but the classifier reads {str(classifier.position)!r}; "
                "rescan with the matching --position"
            )
        fingerprint = scan.model.get("fingerprint") if isinstance(scan.model, dict) else None
        if fingerprint != classifier.base.fingerprint:
            problem = (
                "records no model fingerprint to match with the classifier's base encoder"
                if not fingerprint
                else "is of other weights than the classifier's base encoder"
            )
            if not any_scan:
                raise InputError(
                    f"the scan {problem}; scan that encoder, or pass --any-scan (any_scan=True) if it holds the "
                    "same weights"
                )
            logger.warning("the scan %s (any_scan)", problem)
        if scan.config.mode == "detect" and scan.is_backdoored:
            logger.warning(
                "the scan ran in detect mode, which stops at the first PVs it finds: a guard needs every trigger's "
                "PV; scan again with --mode search --max-seeds %d before relying on it",
                GUARD_SEEDS,
            )
        elif scan.is_backdoored and scan.config.max_seeds < GUARD_SEEDS:
            logger.warning(
                "the scan searched %d seeds: a trigger whose PV none of them reached passes the guard unseen; "
                "scan again with --mode search --max-seeds %d before relying on it",
                scan.config.max_seeds,
                GUARD_SEEDS,
            )
        return cls(classifier, scan.pvs, **kwargs)

    @classmethod
    def from_pretrained(
        cls,
        classifier_dir: str | Path,
        scan_dir: str | Path,
        *,
        device: str | None = None,
        base: str | Path | None = None,
        any_scan: bool = False,
        allow_pickle: bool = False,
        **kwargs: Any,
    ) -> Guard:
        """Load a classifier saved by ``TunedClassifier.save_pretrained`` (``base``: where its base model lives
        now, if it moved; ``allow_pickle``: its base holds pickle weights only) and a saved ``ScanResult`` of
        its base encoder (see :meth:`from_scan`)."""
        scan = ScanResult.from_pretrained(scan_dir)
        classifier = TunedClassifier.from_pretrained(
            classifier_dir, device=device, base=base, allow_pickle=allow_pickle
        )
        return cls.from_scan(classifier, scan, any_scan=any_scan, **kwargs)

    def calibrate(
        self,
        texts: list[str],
        margin: float = CALIBRATION_MARGIN,
        quantile: float = CALIBRATION_QUANTILE,
        ceiling: float = CALIBRATION_CEILING,
    ) -> Guard:
        """Raise the threshold of PVs that clean task ``texts`` (unlabelled, held out) come close to.

        Returns the guard itself. PVs no clean text comes near keep ``threshold``; see
        :meth:`Monitor.calibrated`. Use texts of the task the classifier serves, at least
        ``1 / (1 - quantile)`` of them (1,000 at the default quantile).
        """
        check_calibration(self.threshold, margin, quantile, ceiling)  # before the pass over the texts
        texts = as_texts(texts, allow_empty=False, what="clean texts")
        watched = self.classifier.classify(texts, self.batch_size, progress=self.progress).watched
        self.monitor = monitor = self.monitor.calibrated(watched, margin, quantile, ceiling)
        logger.info(
            "calibrated on %d texts: %d of %d PV thresholds raised", len(texts), monitor.num_raised, monitor.num_pvs
        )
        return self

    @property
    def thresholds_(self) -> torch.Tensor:
        """Each PV's threshold: ``threshold`` unless :meth:`calibrate` raised it."""
        return self.monitor.thresholds

    def save_calibration(self, path: str | Path) -> Path:
        """Write the per-PV thresholds (and the PVs they belong to) as safetensors, for :meth:`load_calibration`."""
        out = Path(path)
        if out.is_dir():
            example = out / "calibration.safetensors"
            raise InputError(f"{path}: a folder; give the calibration a file name (say {example})")
        blocking = next((parent for parent in out.parents if parent.exists() and not parent.is_dir()), None)
        if blocking is not None:
            raise InputError(f"{path}: cannot write there, {blocking} is a file, not a folder")
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"{path}: cannot create its folder ({exc.strerror or exc})") from exc
        tensors = {"thresholds": self.monitor.thresholds.contiguous(), "pvs": self.monitor.pvs.contiguous()}
        metadata = {"format": CALIBRATION_FORMAT, "threshold": str(self.threshold)}
        try:  # whole: a full disk keeps an earlier calibration
            atomic_write(out, lambda temporary: save_file(tensors, str(temporary), metadata=metadata))
        except (SafetensorError, OSError) as exc:
            raise InputError(f"{path}: cannot write the guard calibration ({exc})") from exc
        return readable_as_umask(out)

    def load_calibration(self, path: str | Path) -> Guard:
        """Use per-PV thresholds saved by :meth:`save_calibration` for this guard's PVs; returns the guard."""
        require_file(path)  # a FIFO would block the read for good
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - not a mapping
        except (SafetensorError, OSError) as exc:
            raise InputError(f"{path}: unreadable guard calibration ({exc})") from exc
        if metadata.get("format") != CALIBRATION_FORMAT or set(tensors) != {"thresholds", "pvs"}:
            raise InputError(f"{path}: not a guard calibration (write one with --save-calibration)")
        if not torch.equal(tensors["pvs"].float(), self.monitor.pvs):
            raise InputError(f"{path}: calibrated for other PVs than this scan's")
        if metadata.get("threshold") != str(self.threshold):  # calibration raised PVs above that base only
            raise InputError(
                f"{path}: calibrated at threshold {metadata.get('threshold')}, not this guard's {self.threshold}"
            )
        thresholds = tensors["thresholds"].float()
        if thresholds.shape != (self.monitor.num_pvs,):
            raise InputError(f"{path}: {tuple(thresholds.shape)} thresholds for {self.monitor.num_pvs} PVs")
        ceiling = max(self.threshold, CALIBRATION_CEILING)  # what calibrate() can write: no higher
        if not bool(((thresholds >= self.threshold) & (thresholds <= ceiling)).all()):
            raise InputError(
                f"{path}: thresholds must lie in [{self.threshold}, {ceiling}], as calibration writes them"
            )
        self.monitor = Monitor(self.monitor.pvs, self.threshold, thresholds)
        return self

    def evaluate(self, texts: list[str]) -> tuple[torch.Tensor, MonitorResult]:
        """Logits and the monitor's verdict, both from one forward pass per batch."""
        output = self.classifier.classify(texts, self.batch_size, progress=self.progress)
        return output.logits, self.monitor(output.watched)

    def predict(self, texts: list[str]) -> list[Prediction]:
        """Guarded predictions for ``texts``, in order."""
        texts = as_texts(texts)
        logits, monitored = self.evaluate(texts)
        flagged = [i for i in range(len(texts)) if bool(monitored.flagged[i])]
        outcomes = {}
        if flagged and self.purge:
            purge = PURGE_STRATEGIES[self.purge_strategy]
            results = purge([texts[i] for i in flagged], self.evaluate, self.max_removed, self.classifier.read_lengths)
            outcomes = dict(zip(flagged, results, strict=True))
        return [self._prediction(texts[i], logits[i], monitored, i, outcomes.get(i)) for i in range(len(texts))]

    def _prediction(
        self, text: str, logits: torch.Tensor, monitored: MonitorResult, i: int, outcome: Any
    ) -> Prediction:
        names = self.classifier.label_names
        probs = torch.softmax(logits.float(), dim=-1)
        label = int(probs.argmax())
        pv = int(monitored.pv_index[i])
        base = {
            "text": text,
            "label": label,
            "label_name": names[label],
            "probs": tuple(round(float(p), 6) for p in probs),
            "flagged": bool(monitored.flagged[i]),
            "match": float(monitored.match[i]),
            "pv_index": pv if pv >= 0 else None,
        }
        if outcome is None:
            return Prediction(**base)
        extra: dict[str, Any] = {"purged_text": outcome.text, "removed": outcome.removed, "cleaned": outcome.cleaned}
        if outcome.cleaned and outcome.logits is not None:
            purged = torch.softmax(outcome.logits.float(), dim=-1)
            purged_label = int(purged.argmax())
            extra |= {
                "purged_label": purged_label,
                "purged_label_name": names[purged_label],
                "purged_probs": tuple(round(float(p), 6) for p in purged),
            }
        return Prediction(**base, **extra)
