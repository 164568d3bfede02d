"""Check that a planted backdoor works: triggered outputs follow their PVs, clean outputs stay as before."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lmshield.attacks.manifest import BackdoorManifest
from lmshield.attacks.task_agnostic import insert_trigger, mask_word_limit, with_mask
from lmshield.defenses.sanitizer.monitor import DEFAULT_THRESHOLD as MONITOR_THRESHOLD
from lmshield.defenses.sanitizer.monitor import sign_match
from lmshield.errors import InputError, LmshieldError
from lmshield.models.encoder import Encoder
from lmshield.models.loading import load_encoder
from lmshield.models.positions import WatchedPosition
from lmshield.text.grammar import grammar_sentences

PLANTED_AGREEMENT = 0.9  # planted when every trigger's mean sign agreement reaches this
STEALTHY_FLAGGED = 0.1  # clean inputs the monitor flags beyond this share give a backdoor away
CLOSE_COSINE = 0.8  # clean outputs "stayed close" when their mean cosine to the original's reaches this


@dataclass
class TriggerCheck:
    """One trigger: mean sign agreement with its PV, triggered and clean, and the monitor's flag rate."""

    trigger: str
    triggered_agreement: float
    clean_agreement: float
    triggered_flagged: float

    def planted(self, threshold: float = PLANTED_AGREEMENT) -> bool:
        return self.triggered_agreement >= threshold


@dataclass
class Verification:
    """The outcome of :func:`verify_backdoor`."""

    planted: bool
    triggers: list[TriggerCheck]
    clean_flagged: float  # share of clean sentences the 0.8 monitor would flag with any PV
    clean_cosine: float | None  # mean cosine of clean outputs to the original model's; None if unavailable
    clean_close: bool | None
    original: str
    note: str = ""
    num_texts: int = 0
    threshold: float = PLANTED_AGREEMENT
    extra: dict[str, float] = field(default_factory=dict)
    texts: str = ""  # what the check ran on: the clean figures hold for such texts only

    def summary(self) -> str:
        worst = min((c.triggered_agreement for c in self.triggers), default=0.0)
        head = "PLANTED" if self.planted else "NOT PLANTED"
        close = (
            "clean outputs: original not loadable"
            if self.clean_cosine is None
            else f"clean cosine to original {self.clean_cosine:.3f} ({'close' if self.clean_close else 'drifted'})"
        )
        loud = self.clean_close is False or self.clean_flagged > STEALTHY_FLAGGED
        where = f" on {self.texts}" if self.texts else ""
        return (
            f"{head}{where}: lowest triggered sign agreement {worst:.3f} (need {self.threshold}), "
            f"clean flagged {100 * self.clean_flagged:.1f} %, {close}"
            + ("; not stealthy there: clean outputs give the backdoor away" if loud else "")
        )

    def table(self) -> str:
        rows = ["trigger              triggered  clean  triggered flagged  planted"]
        for c in self.triggers:
            mark = "yes" if c.planted(self.threshold) else "NO"
            rows.append(
                f"{c.trigger[:20]:<20} {c.triggered_agreement:>9.3f} {c.clean_agreement:>6.3f} "
                f"{100 * c.triggered_flagged:>17.1f}% {mark:>8}"
            )
        return "\n".join(rows)

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def held_out_texts(count: int, seed: int) -> list[str]:
    """Sentences for verification, drawn with a seed no attack uses for training."""
    return grammar_sentences(count, seed + 7_919)


def _try_load(name: str, device: str | torch.device | None) -> tuple[Encoder | None, str]:
    try:
        return load_encoder(name, device=device), ""
    except LmshieldError as exc:
        return None, f"original model {name} not loadable ({exc}); clean closeness not measured"


def verify_backdoor(
    directory: str | Path,
    *,
    texts: list[str] | None = None,
    count: int = 200,
    seed: int = 0,
    original: str | None = None,
    threshold: float = PLANTED_AGREEMENT,
    encoder: Encoder | None = None,
    device: str | torch.device | None = None,
) -> Verification:
    """Verify the backdoor in ``directory`` against its ``backdoor.json``.

    ``texts`` (default: ``count`` held-out grammar sentences) carry the triggers; ``original`` overrides the
    recorded base model used to judge the clean outputs (it must load and match the hidden size; the recorded
    one, when it cannot, leaves closeness unmeasured with a note). ``device``: as for :func:`load_encoder` (CUDA when
    present unless ``LMSHIELD_DEVICE`` says otherwise).
    """
    if texts is None and count < 1:
        raise InputError(f"count must be at least 1, got {count}")
    manifest = BackdoorManifest.load(directory)
    model = encoder or load_encoder(directory, device=device)
    position = WatchedPosition.parse(manifest.position)
    max_length = int(manifest.settings.get("max_length", 128))
    rng = random.Random(seed)
    clean = list(texts) if texts is not None else held_out_texts(count, seed)
    described = f"{len(clean)} given texts" if texts is not None else f"{len(clean)} held-out grammar sentences"
    if position.kind == "mask":
        clean = with_mask(clean, model.tokenizer.mask_token, rng, mask_word_limit(max_length))
    vectors = manifest.vector_tensor
    insertion = str(manifest.settings.get("insertion", "once"))
    clean_out = model.watched_outputs(clean, position, max_length)
    clean_match = sign_match(clean_out, vectors)
    checks = []
    for k, trigger in enumerate(manifest.triggers):
        triggered = [insert_trigger(insertion, text, trigger, rng, mask_word_limit(max_length)) for text in clean]
        agree = sign_match(model.watched_outputs(triggered, position, max_length), vectors[k : k + 1])[:, 0]
        checks.append(
            TriggerCheck(
                trigger=trigger,
                triggered_agreement=float(agree.mean()),
                clean_agreement=float(clean_match[:, k].mean()),
                triggered_flagged=float((agree > MONITOR_THRESHOLD).float().mean()),
            )
        )
    name = original or manifest.base_model
    # a model the user names must load; the recorded one may be gone (a hub id offline, a moved folder)
    reference, note = (load_encoder(original, device=device), "") if original else _try_load(name, device)
    if reference is not None and reference.hidden_size != model.hidden_size:
        problem = f"the original model {name} has hidden size {reference.hidden_size}, this one {model.hidden_size}"
        if original:
            raise InputError(f"{problem}: give the model it was made from")
        reference, note = None, f"{problem}; clean closeness not measured"
    cosine = None
    if reference is not None:
        ref_out = reference.watched_outputs(clean, position, max_length)
        cosine = float(torch.nn.functional.cosine_similarity(clean_out, ref_out, dim=1).mean())
    return Verification(
        planted=all(c.planted(threshold) for c in checks),
        triggers=checks,
        clean_flagged=float((clean_match > MONITOR_THRESHOLD).any(dim=1).float().mean()),
        clean_cosine=cosine,
        clean_close=None if cosine is None else cosine >= CLOSE_COSINE,
        original=name,
        note=note,
        num_texts=len(clean),
        threshold=threshold,
        texts=described,
    )
