"""PSIM settings: one frozen dataclass, the release's defaults and a fast preset."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from lmshield.defenses.psim.thresholds import SCORE_KINDS
from lmshield.errors import InputError, check_bool, check_finite, check_share, check_whole

KEEP_HEAD = ("auto", "yes", "no")
SPANS = ("text", "clauses")
# the release's PSIM update: 1 epoch over the 6,920 SST-2 training sentences at batch 32 and lr 2e-5
RELEASE_LR = 2e-5
RELEASE_STEPS = math.ceil(6920 / 32)
# the largest automatic step; larger steps erased the backdoor with the clean signal (SynAttack, MiniLM-L6)
MAX_AUTO_LR = 3e-4


def auto_learning_rate(num_texts: int, batch_size: int = 32, epochs: int = 1) -> float:
    """The release's total update (217 steps at lr 2e-5) spread over the steps of this fit, at most 3e-4.

    The release's lr is tied to its data size: on 480 texts (15 steps) lr 2e-5 barely moves the released
    head (SynAttack on MiniLM-L6: AUROC 0.62); the same total update on 1,000 texts reaches 0.92, the
    release's own settings on 6,920 texts 0.91.
    """
    steps = max(1, math.ceil(num_texts / batch_size)) * epochs
    return min(MAX_AUTO_LR, RELEASE_LR * RELEASE_STEPS / steps)


@dataclass(frozen=True)
class PSIMConfig:
    """How the random-label PEFT module is trained and how its confidence is read.

    Release defaults (Zhao et al. 2024): P-tuning, 5 virtual tokens, prompt-encoder hidden 128, 1 epoch,
    lr 2e-5, batch 32, threshold 0.7 on the top probability (binary tasks). ``lr`` ``None`` (the default)
    scales the release's lr to the data (:func:`auto_learning_rate`): 2e-5 on the release's 6,920 texts.
    ``threshold`` ``None`` means the release's cut carried to ``K`` classes (see :func:`default_threshold`).
    ``score_kind`` ``probability`` reads the top softmax probability, ``normalised`` the class-count-normalised
    ``(p_max - 1/K) / (1 - 1/K)``.
    ``keep_head`` ``auto`` keeps the released classification head when the model has one.
    ``train_pooler`` (lmshield's default, not the release's) trains the released head's pooler with the module:
    on the SynAttack release of the fast benchmark, reading whole inputs, it separated triggered from clean
    inputs far better (AUROC 0.921 against 0.882 frozen, FAR at a 2 % FRR 0.185 against 0.764; BadNet and
    InSent 1.000 either way); victims keep it frozen, as peft does.
    ``span`` ``clauses`` (lmshield's default) reads the module's confidence on the whole input and on each of
    its clauses (split after , ; : . ! ?) and keeps the highest, so that the rest of the input does not
    outweigh a trigger; ``text`` (the release) reads the whole input only. On the SynAttack release of the
    fast benchmark clauses gave AUROC 0.948 against 0.921 and FAR at a 2 % FRR 0.146 against 0.185 (BadNet
    and InSent 1.000 and 0 either way), for about twice the scoring time on SST-2 and three times on IMDB.
    """

    method: str = "ptuning"
    epochs: int = 1
    lr: float | None = None
    batch_size: int = 32
    num_virtual_tokens: int = 5
    encoder_hidden_size: int = 128
    max_length: int = 128
    threshold: float | None = None
    score_kind: str = "probability"
    keep_head: str | bool = "auto"  # auto, yes, no (True / False read as yes / no)
    warmup_ratio: float = 0.06
    train_pooler: bool = True
    span: str = "clauses"
    seed: int = 0

    def __post_init__(self) -> None:
        from lmshield.tuning import get_method

        get_method(self.method)
        if self.score_kind not in SCORE_KINDS:
            raise InputError(f"unknown PSIM score kind {self.score_kind!r}: use {' or '.join(SCORE_KINDS)}")
        if self.span not in SPANS:
            raise InputError(f"unknown PSIM span {self.span!r}: use {' or '.join(SPANS)}")
        if isinstance(self.keep_head, bool):  # TuningConfig's spelling: True / False
            object.__setattr__(self, "keep_head", "yes" if self.keep_head else "no")
        check_bool({"train_pooler": self.train_pooler})
        if self.keep_head not in KEEP_HEAD:
            raise InputError(f"keep_head must be one of {', '.join(KEEP_HEAD)}, got {self.keep_head!r}")
        sizes = ("epochs", "batch_size", "num_virtual_tokens", "encoder_hidden_size", "max_length")
        check_whole({name: getattr(self, name) for name in sizes})
        check_whole({"seed": self.seed}, minimum=0)
        check_share({"warmup_ratio": self.warmup_ratio})
        if self.lr is not None:
            check_finite({"lr": self.lr}, positive=True)
        if self.threshold is not None:
            check_finite({"threshold": self.threshold})  # "0.5", True or NaN: refused before the range check
        if self.threshold is not None and not 0 <= self.threshold < 1:
            raise InputError(
                f"threshold must be in [0, 1) (at 1 or above nothing is ever flagged), got {self.threshold}"
            )

    @classmethod
    def preset(cls, name: str = "release", **overrides: Any) -> PSIMConfig:
        """``release`` or ``fast`` (max length 64 for a CPU), with overrides (``None`` values ignored)."""
        base = {"release": {}, "fast": {"max_length": 64}}
        if name not in base:
            raise InputError(f"unknown PSIM preset {name!r}: use release or fast")
        return cls(**{**base[name], **{k: v for k, v in overrides.items() if v is not None}})

    def learning_rate(self, num_texts: int) -> float:
        """The lr a fit on ``num_texts`` texts uses: ``lr`` when set, else :func:`auto_learning_rate`."""
        return self.lr if self.lr is not None else auto_learning_rate(num_texts, self.batch_size, self.epochs)

    def replace(self, **changes: Any) -> PSIMConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PSIMConfig:
        """Settings from :meth:`to_dict` (``score``, the field's name before 0.2, is read as ``score_kind``)."""
        data = {"score_kind": data["score"], **data} if "score" in data else data
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
