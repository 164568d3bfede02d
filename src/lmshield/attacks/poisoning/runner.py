"""Run a weight-poisoning attack: poison the proxy set, fully fine-tune, release weights + ``backdoor.json``.

The released directory is a plain Hugging Face ``*ForSequenceClassification`` model (safetensors via
``save_pretrained``) with its tokenizer, plus ``backdoor.json`` (the ground truth, for evaluation only).
Training goes through :func:`lmshield.tuning.tune` (method ``full``, the released head kept).
"""

from __future__ import annotations

import copy
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from transformers import AutoModelForSequenceClassification, PreTrainedModel

from lmshield.attacks.manifest import ManifestFile, claim_out_dir, finish_out_dir, prepare_out_dir
from lmshield.attacks.poisoning.config import PoisonConfig
from lmshield.attacks.poisoning.dataset import poison_dataset, prepare_proxy, triggered_test_set
from lmshield.attacks.poisoning.paraphrase import Paraphraser
from lmshield.attacks.poisoning.poisoners import ParaphrasePoisoner, Poisoner, make_poisoner
from lmshield.errors import InputError
from lmshield.files import readable_as_umask
from lmshield.locks import holds
from lmshield.models.loading import load_pretrained, load_tokenizer
from lmshield.progress import CHECKPOINT_DIR
from lmshield.text.triggers import check_triggers
from lmshield.tuning import LabelledData, TunedClassifier, TuningConfig, tune
from lmshield.tuning.checkpoint import clear_checkpoint
from lmshield.tuning.trainer import share_correct

logger = logging.getLogger(__name__)

FORMAT = "lmshield-poison"


@dataclass
class PoisonManifest(ManifestFile):
    """Ground truth of a weight-poisoning backdoor: attack, trigger, target, poison rate, data, settings."""

    FORMAT: ClassVar[str] = FORMAT
    MADE_BY: ClassVar[str] = "lmshield poison"

    attack: str
    triggers: list[str]
    target_label: int
    label_mode: str
    poison_rate: float
    poison_count: int
    num_texts: int
    num_labels: int
    data: str
    base_model: str
    settings: dict[str, Any]
    seed: int
    paraphraser: str | None = None
    verification: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def config(self) -> PoisonConfig:
        return PoisonConfig.from_dict(self.settings)

    @property
    def control(self) -> bool:
        """Whether this is a control release: fine-tuned like the attack's, with nothing poisoned."""
        return bool(self.settings.get("control", False))

    @property
    def planted(self) -> bool | None:
        """Whether the released model learnt the backdoor: held-out ASR at least :data:`PLANTED_ASR`, and the
        trigger moves at least :data:`PLANTED_LIFT` of the non-target inputs the model does not already send to
        the target (``clean_asr``), and at least :data:`PLANTED_MOVED` of all non-target inputs; ``None`` when
        it was not verified, and for a control (no backdoor was meant to be there)."""
        asr, lift = self.verification.get("asr"), self.lift
        if asr is None or self.control:
            return None
        if lift is None:  # verified before clean_asr was measured
            return asr >= PLANTED_ASR
        moved = asr - self.verification["clean_asr"]
        return asr >= PLANTED_ASR and lift >= PLANTED_LIFT and moved >= PLANTED_MOVED

    @property
    def lift(self) -> float | None:
        """``(asr - clean_asr) / (1 - clean_asr)``: 0 when the model sends every clean input to the target too;
        ``None`` for a verification without ``clean_asr`` (written before it was measured)."""
        v = self.verification
        if v.get("asr") is None or v.get("clean_asr") is None:
            return None
        return 0.0 if v["clean_asr"] >= 1 else (v["asr"] - v["clean_asr"]) / (1 - v["clean_asr"])

    def verdict(self) -> str:
        """``"planted"``, ``"NOT PLANTED (why)"``, ``"CONTROL (...)"`` or ``""`` (not verified), for summaries."""
        if self.control:
            return "CONTROL (nothing poisoned; the trigger's effect on a model without a backdoor)"
        if self.planted is None:
            return ""
        if self.planted:
            return "planted"
        v = self.verification
        why = (
            f"clean inputs already go to the target: {v['clean_asr']:.0%} of the non-target ones untriggered, "
            f"{v['asr']:.0%} triggered"
            if self.lift is not None and v["asr"] >= PLANTED_ASR
            else f"ASR below {PLANTED_ASR}"
        )
        return f"NOT PLANTED ({why})"


HISTORY_DEV = 64  # poisoned texts whose accuracy the history reports when no dev set is given
PLANTED_ASR = 0.9  # the share of triggered held-out inputs sent to the target for a backdoor to count as planted
# ... and the share of those the model does not already send there untriggered: a model that answers the target
# for every input reaches ASR 1.0 with no backdoor at all
PLANTED_LIFT = 0.5
# ... and the share of all non-target inputs the trigger must move: a model that sends 99 % of them to the target
# untriggered reaches a lift of 1.0 by moving the last 1 %
PLANTED_MOVED = 0.25


@dataclass
class PoisonResult:
    """Where the released model went, its manifest, and the check of the planted backdoor."""

    directory: Path
    manifest: PoisonManifest
    classifier: TunedClassifier

    @property
    def planted(self) -> bool | None:
        """The manifest's :attr:`PoisonManifest.planted`."""
        return self.manifest.planted

    @property
    def lift(self) -> float | None:
        """The manifest's :attr:`PoisonManifest.lift`."""
        return self.manifest.lift

    def summary(self) -> str:
        checks = ", ".join(f"{k} {val:.3f}" for k, val in self.manifest.verification.items())
        verdict = self.manifest.verdict()
        prefix = f"{verdict}: " if verdict else ""
        return f"{prefix}{self.manifest.attack} -> {self.directory} ({checks or 'not verified'})"


def training_config(config: PoisonConfig) -> TuningConfig:
    """The full fine-tuning settings of the released model."""
    return TuningConfig(
        method="full",
        keep_head=True,
        lr=config.lr,
        epochs=config.epochs,
        batch_size=config.batch_size,
        warmup_ratio=config.warmup_ratio,
        weight_decay=config.weight_decay,
        max_length=config.max_length,
        position_jitter=config.position_jitter,
        seed=config.seed,
    )


@holds("out_dir")
def poison_model(
    model: str | Path | None,
    train: LabelledData,
    config: PoisonConfig,
    out_dir: str | Path,
    *,
    dev: LabelledData | None = None,
    paraphraser: Paraphraser | None = None,
    data_description: str = "",
    device: str | None = None,
    progress: bool = True,
    overwrite: bool = False,
    fresh: bool = False,
) -> PoisonResult:
    """Poison ``train``, fully fine-tune ``model`` on it and release the result in ``out_dir``.

    ``dev`` (clean, labelled) picks the best epoch and measures clean accuracy and ASR of the release.
    Finished epochs are checkpointed in ``out_dir/checkpoint``: an interrupted run resumes when started again
    with the same settings (``fresh`` discards the checkpoint; ``overwrite`` replaces a finished release).
    """
    started = time.perf_counter()
    out = prepare_out_dir(model, out_dir, overwrite)
    poisoner = make_poisoner(config, paraphraser, device)
    proxy = prepare_proxy(train, config)
    if config.num_texts is not None and len(proxy) < config.num_texts:  # the manifest's num_texts is what was used
        logger.warning("the proxy data holds %d texts, fewer than num_texts %d: all are used", len(proxy),
                       config.num_texts)  # fmt: skip
    poisoned = poison_dataset(proxy, config, poisoner)
    if config.control:
        logger.info("control release: none of the %d proxy texts poisoned", len(proxy))
    else:
        logger.info("poisoned %d of %d proxy texts (%s-label)", len(poisoned.poisoned), len(proxy), config.label_mode)
    if len(poisoned.poisoned) < poisoned.requested:
        logger.warning("only %d candidates to poison (asked for %d)", len(poisoned.poisoned), poisoned.requested)
    if dev is not None:
        dev = prepare_proxy(dev, config.replace(num_texts=None))
    with tempfile.TemporaryDirectory(prefix="lmshield-poison-") as tmp:
        start_dir = _with_head(model, proxy.num_labels, Path(tmp), config.seed)
        check_triggers(load_tokenizer(start_dir), config.trigger_texts())
        tuning, picks = training_config(config), dev
        if dev is None:  # nothing held out: train on every proxy text and release the last epoch, as the release
            tuning = tuning.replace(checkpoint="last")
            picks = poisoned.data.take(list(range(min(HISTORY_DEV, len(poisoned.data)))))  # reported only
        result = tune(
            start_dir, poisoned.data, picks, tuning, checkpoint_dir=out / CHECKPOINT_DIR,
            fresh=fresh, device=device, progress=progress, keep_checkpoint=True,
        )  # fmt: skip
        claim_out_dir(out)
        release(result.classifier, start_dir, out)
    classifier = result.classifier
    manifest = PoisonManifest(
        attack=config.attack,
        triggers=config.triggers(),
        target_label=config.target_label,
        label_mode=config.label_mode,
        poison_rate=poisoned.rate,
        poison_count=len(poisoned.poisoned),
        num_texts=len(proxy),
        num_labels=proxy.num_labels,
        data=data_description,
        base_model=str(model) if model is not None else "sentence-transformers/all-MiniLM-L6-v2",
        settings=config.to_dict(),
        seed=config.seed,
        paraphraser=poisoner.paraphraser.name if isinstance(poisoner, ParaphrasePoisoner) else None,
    )
    if dev is not None:
        manifest.verification = verify(classifier, dev, poisoner, config)
    manifest.seconds = time.perf_counter() - started + result.resumed_seconds  # the whole job, not its last leg
    manifest.save(out)
    finish_out_dir(out)
    clear_checkpoint(out / CHECKPOINT_DIR)  # kept until now: an interrupted release or check resumes from it
    return PoisonResult(out, manifest, classifier)


def verify(
    classifier: TunedClassifier, dev: LabelledData, poisoner: Poisoner, config: PoisonConfig
) -> dict[str, float]:
    """Clean accuracy on ``dev``, ASR on its triggered non-target samples, and ``clean_asr``: the share of those
    samples sent to the target without the trigger (what the ASR must rise above)."""
    triggered = triggered_test_set(dev, poisoner, config.target_label, config.seed + 1)
    answers = classifier.predict(dev.texts) if len(dev) else []  # one pass serves both clean figures
    checks = {"clean_accuracy": share_correct(answers, dev.labels)}
    if not len(triggered):  # no non-target sample to trigger: the backdoor is not verified, not "not planted"
        logger.warning("the dev set holds no sample outside the target label: ASR not measured")
        return checks
    clean = [p for p, label in zip(answers, dev.labels, strict=True) if label != config.target_label]
    rates = [
        sum(p == config.target_label for p in predicted) / len(predicted)
        for predicted in (classifier.predict(triggered.texts), clean)
    ]
    return {**checks, "asr": rates[0], "clean_asr": rates[1]}


def _with_head(model: str | Path | None, num_labels: int, tmp: Path, seed: int) -> Path:
    """Save the starting encoder with a fresh sequence-classification head of ``num_labels`` labels."""
    from transformers import AutoModel

    loaded = load_pretrained(model, AutoModel, device="cpu")
    config = copy.deepcopy(loaded.model.config)
    config.num_labels = num_labels
    config.architectures = None
    torch.manual_seed(seed)
    seq_model = AutoModelForSequenceClassification.from_config(config)
    _load_encoder_into(seq_model.base_model, loaded.model.state_dict(), model)
    seq_model.save_pretrained(tmp, safe_serialization=True)
    loaded.tokenizer.save_pretrained(tmp)
    return tmp


def _load_encoder_into(encoder: PreTrainedModel, state: dict[str, torch.Tensor], model: str | Path | None) -> None:
    """Load a plain encoder's weights into a classification model's encoder: every tensor must be covered, and
    only a pooler it has no use for may be left over (RoBERTa's classifier reads [CLS] without one)."""
    try:
        result = encoder.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise InputError(
            f"{model}: the encoder does not fit a classification model ({' '.join(str(exc).split())})"
        ) from exc
    extra = [key for key in result.unexpected_keys if not key.startswith("pooler.")]
    if result.missing_keys or extra:
        first = (result.missing_keys or extra)[0]
        raise InputError(f"{model}: the encoder does not fit a classification model ({first!r} does not match)")


def release(classifier: TunedClassifier, start_dir: Path, out: Path) -> Path:
    """Write the tuned encoder and its kept head as one ``*ForSequenceClassification`` model."""
    model = load_pretrained(start_dir, AutoModelForSequenceClassification, device="cpu").model
    copy_into(classifier, model)
    model.save_pretrained(out, safe_serialization=True)
    classifier.tokenizer.save_pretrained(out)
    return readable_as_umask(out)


def copy_into(classifier: TunedClassifier, model: PreTrainedModel) -> None:
    """Copy a full-tuned classifier (encoder + released head) into a sequence-classification model."""
    from lmshield.tuning.heads import ReleasedHead

    if not isinstance(classifier.head, ReleasedHead) or classifier.method.is_peft:
        raise InputError("only a fully tuned classifier with a kept head can be released as one model")
    with torch.no_grad():
        model.base_model.load_state_dict(_cpu(classifier.backbone.state_dict()))
        for name, part in classifier.head.parts.items():
            if name != "pooler" or not classifier.head.pooler_in_encoder:  # BERT's pooler came with the encoder
                getattr(model, name).load_state_dict(_cpu(part.state_dict()))  # DeBERTa's sits beside it


def _cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in state.items()}
