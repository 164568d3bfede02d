"""PSIM: Poisoned Sample Identification Module (Zhao et al., NAACL Findings 2024), scikit-learn style.

``PSIM(...).fit(model_dir, texts, num_labels)`` trains a PEFT module on the released (possibly poisoned)
model with random labels; ``score`` reads its top softmax probability (or the class-count-normalised
variant), by default the highest over the whole input and each of its clauses (``span``); ``flag`` marks
inputs whose score exceeds the threshold as poisoned. Learned state lives in attributes ending in ``_``.

PSIM sees backdoors that make the released model extremely confident, which word and sentence triggers
do. A syntactic trigger whose words vary (the stand-in's generated clauses, like SCPN's) moved the
released MiniLM-L6 to the target without that confidence and went through (README, PSIM benchmark).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from lmshield.defenses.psim.config import PSIMConfig
from lmshield.defenses.psim.thresholds import (
    SCORE_KINDS,
    calibrate_threshold,
    check_target_frr,
    default_threshold,
    flag_scores,
    normalise,
    rescale_threshold,
)
from lmshield.defenses.psim.training import head_labels, train_random_label_module
from lmshield.devices import resolve_device
from lmshield.errors import InputError, check_bool, check_whole, reject_unknown_params
from lmshield.jsonio import check_format_version, unmark, write_marker_json
from lmshield.text.clauses import clause_views
from lmshield.text.inputs import as_texts, without_blanks
from lmshield.tuning import TunedClassifier
from lmshield.tuning.classifier import BaseMismatchError

logger = logging.getLogger(__name__)

PSIM_JSON = "psim.json"
MODULE_DIR = "module"
FORMAT = "lmshield-psim"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Calibration:
    """How the threshold was set: the target FRR and the held-out texts it was met on."""

    target_frr: float
    achieved_frr: float
    num_texts: int

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        """Read a saved calibration, refusing values calibration cannot produce."""
        calibration = cls(**data)
        rates = (calibration.target_frr, calibration.achieved_frr)
        if not all(isinstance(r, int | float) and not isinstance(r, bool) and 0 <= r <= 1 for r in rates):
            raise InputError(f"calibration_ rates must be shares in [0, 1], got {list(rates)}")
        check_whole({"calibration_ num_texts": calibration.num_texts})
        return calibration


@dataclass(frozen=True)
class PSIMScores:
    """Per-text output of PSIM's module: top probability, its normalised form, the argmax label, and the view
    they were read on (the text itself, or with ``span`` ``clauses`` possibly one of its clauses)."""

    probability: np.ndarray
    normalised: np.ndarray
    label: np.ndarray
    view: list[str]

    def select(self, kind: str) -> np.ndarray:
        """The scores of one kind: ``probability`` or ``normalised``."""
        if kind not in SCORE_KINDS:
            raise InputError(f"unknown score kind {kind!r}: use {' or '.join(SCORE_KINDS)}")
        return getattr(self, kind)


def _check_run_params(device: str | None, progress: bool) -> None:
    """``device`` names a usable device (checked now, not after the model loads); ``progress`` is a bool."""
    if device is not None:
        resolve_device(device)
    check_bool({"progress": progress})


def _as_scores(scores: Any) -> np.ndarray:
    """``scores`` as a 1-D float array, or :class:`InputError` (texts belong to :meth:`PSIM.flag`, not ``flags``)."""
    hint = "flags takes the scores score(texts) gives; to flag texts, pass a list of texts to flag()"
    if isinstance(scores, str | bytes):
        raise InputError(f"{hint}, not one string")
    try:
        values = np.asarray(scores)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{hint} ({exc})") from None
    if values.size and values.dtype.kind not in "iuf":
        raise InputError(f"{hint}, not {'strings' if values.dtype.kind in 'US' else f'{values.dtype} values'}")
    if values.ndim != 1:
        raise InputError(f"{hint}: one score per text, got an array of shape {values.shape}")
    return values.astype(np.float64)


def most_confident_view(top: np.ndarray, owners: np.ndarray) -> np.ndarray:
    """For each text (``owners`` numbers them 0, 1, ... in order), the index of its view with the highest
    ``top`` (the first of equals)."""
    if not len(owners):
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((np.arange(len(top)), -top, owners))  # by text, then highest score, then first view
    starts = np.flatnonzero(np.r_[True, owners[order][1:] != owners[order][:-1]])
    return order[starts]


class PSIM:
    """Poisoned-sample identification with a PEFT module trained on random labels.

    Parameters are those of :class:`PSIMConfig` (plus ``device`` and ``progress``), stored unchanged under
    their own names as in scikit-learn (so ``sklearn.base.clone`` works); learned state goes to
    ``classifier_``, ``num_labels_``, ``lr_`` (the learning rate used, see :func:`auto_learning_rate`),
    ``threshold_`` and ``calibration_``.
    """

    def __init__(
        self,
        method: str = "ptuning",
        *,
        epochs: int = 1,
        lr: float | None = None,
        batch_size: int = 32,
        num_virtual_tokens: int = 5,
        encoder_hidden_size: int = 128,
        max_length: int = 128,
        threshold: float | None = None,
        score_kind: str = "probability",
        keep_head: str | bool = "auto",
        warmup_ratio: float = 0.06,
        train_pooler: bool = True,
        span: str = "clauses",
        seed: int = 0,
        device: str | None = None,
        progress: bool = True,
    ) -> None:
        self.method = method
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.num_virtual_tokens = num_virtual_tokens
        self.encoder_hidden_size = encoder_hidden_size
        self.max_length = max_length
        self.threshold = threshold
        self.score_kind = score_kind
        self.keep_head = keep_head
        self.warmup_ratio = warmup_ratio
        self.train_pooler = train_pooler
        self.span = span
        self.seed = seed
        self.device = device
        self.progress = progress
        self.config  # noqa: B018 - validate the settings now: a bad value fails here, not after training
        _check_run_params(device, progress)

    @classmethod
    def from_config(cls, config: PSIMConfig, **kwargs: Any) -> PSIM:
        return cls(**config.to_dict(), **kwargs)

    @property
    def config(self) -> PSIMConfig:
        """The settings as a validated frozen config."""
        return PSIMConfig(**{f.name: getattr(self, f.name) for f in fields(PSIMConfig)})

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor's parameters (scikit-learn's estimator protocol; ``deep`` has nothing to recurse)."""
        self.config  # noqa: B018 - validate, as the constructor did
        names = [f.name for f in fields(PSIMConfig)]
        return {**{name: getattr(self, name) for name in names}, "device": self.device, "progress": self.progress}

    def set_params(self, **params: Any) -> PSIM:
        """Change parameters (validated as in the constructor); refit afterwards for them to take effect.

        ``score_kind`` acts at once on a fitted PSIM: its ``threshold_`` is carried to the new scale, so the
        same inputs stay flagged. ``span`` acts at once too, but no threshold carries between spans (a text's
        clause reading is never below its whole-text one): a calibrated PSIM warns to be calibrated again.
        """
        reject_unknown_params(self, params)
        PSIMConfig.from_dict({**self.config.to_dict(), **params})
        _check_run_params(params.get("device", self.device), params.get("progress", self.progress))
        if self.is_fitted and "score_kind" in params:
            kinds = (self.score_kind, params["score_kind"])
            self.threshold_ = rescale_threshold(self.threshold_, self.num_labels_, *kinds)
            if self.threshold is not None and "threshold" not in params:  # a clone or refit reads the param
                params = {**params, "threshold": rescale_threshold(self.threshold, self.num_labels_, *kinds)}
        if self.is_fitted and self.calibration_ is not None and params.get("span", self.span) != self.span:
            logger.warning(
                "threshold_ %.4f was calibrated reading the %s span; call calibrate again for the %s span",
                self.threshold_, self.span, params["span"],
            )  # fmt: skip
        for name, value in params.items():
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        fitted = f", fitted on {self.num_labels_} labels" if self.is_fitted else ""
        return f"PSIM(method={self.method!r}, threshold={self.threshold}{fitted})"

    # -- fitting ------------------------------------------------------------------------------------------------

    def fit(self, model: str | Path | None, texts: list[str], num_labels: int | None = None) -> PSIM:
        """Train the module on ``texts`` (the downstream training set, labels not needed) with random labels over
        ``num_labels`` classes (``None``: as many as the released classification head has, else 2)."""
        config = self.config
        if not isinstance(model, str | Path | type(None)):
            raise InputError(
                f"PSIM.fit takes the released model's directory or hub id (its saved head is read from there), "
                f"not a loaded {type(model).__name__}"
            )
        if num_labels is None:  # a one-output (regression) head is no class count
            num_labels = max(2, head_labels(model) or 2)
        texts = without_blanks(as_texts(texts, allow_empty=False))  # as the CLI's readers leave them out
        self.classifier_ = train_random_label_module(
            model, texts, num_labels, config, device=self.device, progress=self.progress
        )
        self.num_labels_ = num_labels
        self.threshold_ = (
            self.threshold if self.threshold is not None else default_threshold(num_labels, self.score_kind)
        )
        self.calibration_: Calibration | None = None
        self.n_train_ = len(texts)
        self.model_ = None if model is None else str(model)
        return self

    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "classifier_")

    @property
    def lr_(self) -> float:
        """The learning rate the module was trained with (``lr``, or :func:`auto_learning_rate`'s)."""
        return self._check_fitted().config.lr

    def _check_fitted(self) -> TunedClassifier:
        if not self.is_fitted:
            raise InputError("PSIM is not fitted: call fit(model, texts, num_labels) or from_pretrained first")
        return self.classifier_

    # -- scoring ------------------------------------------------------------------------------------------------

    def scores(self, texts: list[str]) -> PSIMScores:
        """Top probability, its class-count-normalised form and the predicted label, per text (with ``span``
        ``clauses``: those of the text's most confident view, the whole text or one of its clauses)."""
        classifier = self._check_fitted()
        texts = as_texts(texts)
        views, owners = clause_views(texts, self.max_length) if self.span == "clauses" else (texts, None)
        probs = classifier.classify(views, progress=self.progress and len(views) > 256).probs.numpy()
        # float64 throughout: both scales then flag the same inputs at thresholds carried between them
        top = probs.max(axis=1).astype(np.float64) if len(views) else np.zeros(0, dtype=np.float64)
        label = probs.argmax(axis=1) if len(views) else np.zeros(0, dtype=np.int64)
        if owners is not None:
            best = most_confident_view(top, np.asarray(owners, dtype=np.int64))
            top, label, views = top[best], label[best], [views[i] for i in best]
        return PSIMScores(top, normalise(top, self.num_labels_), label, list(views))

    def score(self, texts: list[str], kind: str | None = None) -> np.ndarray:
        """The poison score per text: higher means more likely poisoned (``kind`` overrides ``score_kind``)."""
        return self.scores(texts).select(kind or self.score_kind)

    def flag(self, texts: list[str]) -> np.ndarray:
        """``True`` for texts PSIM refuses (score above ``threshold_``)."""
        return self.flags(self.score(texts))

    def flags(self, scores: np.ndarray) -> np.ndarray:
        """``True`` where a score is above ``threshold_``: the one rule by which PSIM refuses an input."""
        self._check_fitted()
        return np.asarray(flag_scores(_as_scores(scores), self.threshold_), dtype=bool)

    def calibrate(self, texts: list[str], target_frr: float = 0.05) -> PSIM:
        """Set ``threshold_`` so that at most ``target_frr`` of held-out clean task texts are flagged."""
        check_target_frr(target_frr)  # before scoring: a bad target must not cost a pass over the texts
        scores = self.score(without_blanks(as_texts(texts, allow_empty=False), what="calibration texts"))
        self.threshold_ = calibrate_threshold(scores.tolist(), target_frr)
        achieved = float(np.mean(self.flags(scores)))
        self.calibration_ = Calibration(target_frr, achieved, len(scores))
        return self

    # -- artefacts ------------------------------------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``psim.json`` (settings + learned state) and the module (safetensors) under ``directory``."""
        classifier = self._check_fitted()
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        module = (out / MODULE_DIR).resolve()
        if not self._module_saved_at(module):  # saving a calibration in place rewrites psim.json alone
            unmark(out / PSIM_JSON)
            classifier.save_pretrained(module)
            self._module_home = (module, classifier)
        payload = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "config": self.config.to_dict(),
            "num_labels_": self.num_labels_,
            "threshold_": self.threshold_,
            "calibration_": asdict(self.calibration_) if self.calibration_ else None,
            "n_train_": self.n_train_,
            "model_": self.model_,
        }
        write_marker_json(out / PSIM_JSON, payload)
        return out

    def _module_saved_at(self, module: Path) -> bool:
        """Whether ``module`` already holds this PSIM's module as loaded or saved (not refitted since)."""
        home = getattr(self, "_module_home", None)
        return home is not None and home[0] == module and home[1] is self.classifier_ and module.is_dir()

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, *, device: str | None = None, progress: bool = True, model: str | Path | None = None
    ) -> PSIM:
        """Load a PSIM written by :meth:`save_pretrained`; ``model``: where the released model it was fitted on
        lives now, when it moved (its weights must match the recorded fingerprint)."""
        _check_run_params(device, progress)  # the caller's, not the file's: said before the file is read
        path = Path(directory) / PSIM_JSON
        if not path.is_file():
            raise InputError(f"{directory}: not a saved PSIM (no {PSIM_JSON})")
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from exc
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise InputError(f"{path}: not a PSIM file")
        check_format_version(payload, FORMAT_VERSION, path)
        try:
            config = {"span": "text", **payload["config"]}  # saved before 0.4, calibrated reading the whole text
            psim = cls.from_config(PSIMConfig.from_dict(config), device=device, progress=progress)
            psim.num_labels_ = int(payload["num_labels_"])
            psim.threshold_ = float(payload["threshold_"])
            psim.calibration_ = (
                Calibration.from_dict(payload["calibration_"]) if payload.get("calibration_") is not None else None
            )
            psim.n_train_ = int(payload.get("n_train_", 0))
            psim.model_ = payload.get("model_")
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise InputError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from exc
        except InputError as exc:  # a setting out of range: say which file holds it
            raise InputError(f"{path}: {exc}") from exc
        if not 0 <= psim.threshold_ <= 1:  # below 0 every input is flagged; at 1 (saturated calibration), none
            raise InputError(f"{path}: threshold_ {psim.threshold_} is not a usable threshold (in [0, 1])")
        try:
            psim.classifier_ = TunedClassifier.from_pretrained(Path(directory) / MODULE_DIR, device=device, base=model)
        except BaseMismatchError:  # said of PSIM, not of a classifier the user never tuned
            raise InputError(f"{model}: not the weights of the released model this PSIM was fitted on") from None
        if model is not None:
            psim.model_ = str(model)
        else:  # a module that names its base where it lies now: saving back here need not rewrite it
            psim._module_home = ((Path(directory) / MODULE_DIR).resolve(), psim.classifier_)
        if psim.num_labels_ < 2 or psim.num_labels_ != len(psim.classifier_.label_names):
            raise InputError(
                f"{path}: num_labels_ {psim.num_labels_} does not match the module's "
                f"{len(psim.classifier_.label_names)} labels"
            )
        return psim
