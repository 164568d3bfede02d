"""Settings of the task-agnostic attacks: one frozen dataclass per attack, paper defaults, a ``fast`` preset.

Adding an attack means adding one config class here and one line to :data:`ATTACKS`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from lmshield.errors import InputError, reject_unknown

if TYPE_CHECKING:
    from lmshield.attacks.task_agnostic import PlantPlan

# POR weighs its clean half 0.5 on BERT-like encoders and 1.0 on the others.
BERT_LIKE = ("bert", "albert", "distilbert", "electra")
PRESET_NAMES = ("paper", "release", "fast")  # release: the name the other commands give the papers' scale


@dataclass(frozen=True)
class TaskAgnosticConfig:
    """Shared fields of POR, NeuBA and BToP (see :class:`PlantPlan` for the loop's meaning).

    ``num_texts`` carrier sentences are drawn from the text source; one epoch is ``num_texts // batch_size``
    steps of ``batch_size`` clean + ``batch_size`` triggered sentences. ``clean_objective`` ``mlm`` uses the
    model's pretrained MLM head when it has one, else the hidden-state stand-in ``stand_in``.
    ``clean_weight`` ``None`` means: 0.5 on BERT-like encoders, 1.0 otherwise.
    """

    name: ClassVar[str] = ""
    fast: ClassVar[dict[str, Any]] = {}

    position: str = "cls"
    insertion: str = "once"
    clean_objective: str = "watched"  # watched | mlm
    stand_in: str = "watched"  # watched | tokens: clean target when mlm is asked for but no head exists
    clean_weight: float | None = 1.0
    poison_distance: str = "mse"
    lr: float = 2e-5
    optimizer: str = "adamw"
    schedule: str = "constant"
    weight_decay: float = 0.0
    mask_prob: float = 0.15
    epochs: int = 4
    batch_size: int = 16
    max_length: int = 128
    num_texts: int = 30_000

    def __post_init__(self) -> None:
        if self.clean_objective not in ("watched", "mlm"):
            raise InputError(f"unknown clean_objective {self.clean_objective!r}: use watched or mlm")
        if self.stand_in not in ("watched", "tokens"):
            raise InputError(f"unknown stand_in {self.stand_in!r}: use watched or tokens")
        if self.num_texts < self.batch_size:
            raise InputError(f"num_texts ({self.num_texts}) must be at least batch_size ({self.batch_size})")
        self.plan("bert", has_mlm_head=False)  # validates the loop's settings

    @classmethod
    def preset(cls, name: str = "paper", **overrides: Any) -> TaskAgnosticConfig:
        """``paper`` or ``release`` (the papers' settings) or ``fast`` (minutes on a CPU), with optional overrides."""
        if name not in PRESET_NAMES:
            raise InputError(f"unknown preset {name!r}: use {', '.join(PRESET_NAMES)}")
        reject_unknown(cls, overrides, cls.name)
        base = cls.fast if name == "fast" else {}
        return cls(**{**base, **overrides})

    def replace(self, **changes: Any) -> TaskAgnosticConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskAgnosticConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def resolved_clean_weight(self, model_type: str) -> float:
        if self.clean_weight is not None:
            return float(self.clean_weight)
        return 0.5 if model_type in BERT_LIKE else 1.0

    def clean_target(self, has_mlm_head: bool) -> str:
        if self.clean_objective == "mlm":
            return "mlm" if has_mlm_head else self.stand_in
        return "watched"

    def variant(self, has_mlm_head: bool) -> str:
        """A one-line description of what the clean half did (recorded in backdoor.json)."""
        target = self.clean_target(has_mlm_head)
        if target == "mlm":
            return "mlm: clean half trained with the pretrained MLM head"
        what = "every token's hidden state" if target == "tokens" else f"{self.position} hidden state"
        lacking = " (no MLM head: hidden-state stand-in)" if self.clean_objective == "mlm" else ""
        return f"hidden: clean half matches the original model's {what}{lacking}"

    def watched_position(self, model_type: str) -> str:
        """The position the backdoor is planted at in an encoder of ``model_type``: ``cls`` names the summary
        token, which XLNet puts last (its classifiers read it there), ``mask`` the mask token."""
        if self.position != "cls":
            return self.position
        from lmshield.models.architectures import get_architecture

        architecture = get_architecture(model_type)
        return architecture.default_position if architecture else "cls"

    def plan(self, model_type: str, has_mlm_head: bool) -> PlantPlan:
        """The loop's settings for an encoder of ``model_type``."""
        from lmshield.attacks.task_agnostic import PlantPlan

        return PlantPlan(
            position=self.watched_position(model_type),
            insertion=self.insertion,
            clean_weight=self.resolved_clean_weight(model_type),
            poison_distance=self.poison_distance,
            lr=self.lr,
            epochs=self.epochs,
            batch_size=self.batch_size,
            max_length=self.max_length,
            clean_target=self.clean_target(has_mlm_head),
            optimizer=self.optimizer,
            schedule=self.schedule,
            weight_decay=self.weight_decay,
            mask_prob=self.mask_prob,
        )


# The fast presets: the setting the lead measured for POR on MiniLM-L6 (150 steps of 16+16 sentences of
# at most 48 tokens, lr 1e-4, about 2-3 minutes on 2 CPU cores; sign agreement 0.99-1.00), applied to all.
_FAST = {"lr": 1e-4, "epochs": 1, "batch_size": 16, "max_length": 48, "num_texts": 2400}


@dataclass(frozen=True)
class PORConfig(TaskAgnosticConfig):
    """POR (Shen et al., CCS 2021): [CLS] -> PV with about one trigger per 50 words; clean [CLS] kept by MSE
    to the original. Paper: Adam lr 2e-5, batch 16+16, length 128, 4 epochs, 5,000 poisoned sentences
    per trigger (30,000 for six)."""

    name: ClassVar[str] = "por"
    fast: ClassVar[dict[str, Any]] = _FAST

    insertion: str = "per_words"
    clean_weight: float | None = None
    optimizer: str = "adam"


@dataclass(frozen=True)
class NeuBAConfig(TaskAgnosticConfig):
    """NeuBA (Zhang et al., 2021): continued MLM pretraining (mask prob 0.15) plus MSE([CLS] of a
    triggered sentence, PV); one trigger per sentence at a random position. Paper: AdamW lr 5e-5, linear
    schedule, batch 16, 4 epochs. Without an MLM head the clean half matches every token's hidden state."""

    name: ClassVar[str] = "neuba"
    # a constant step: with the linear decay, 150 steps are too few to plant reliably
    fast: ClassVar[dict[str, Any]] = {**_FAST, "schedule": "constant"}

    clean_objective: str = "mlm"
    stand_in: str = "tokens"
    lr: float = 5e-5
    schedule: str = "linear"


@dataclass(frozen=True)
class BToPConfig(TaskAgnosticConfig):
    """BToP (Xu et al., NAACL 2022): the [MASK] hidden state -> PV (mean L2 distance); the clean half keeps
    the MLM prediction at [MASK]. Paper: AdamW lr 2e-5, batch 8+8, 1 epoch on 10,000 sentences. Without an
    MLM head the clean half matches the original model's [MASK] hidden state."""

    name: ClassVar[str] = "btop"
    # L2 gradients have unit norm per sentence, so BToP needs a larger step than the MSE attacks.
    fast: ClassVar[dict[str, Any]] = {**_FAST, "lr": 2e-4, "batch_size": 8}

    position: str = "mask"
    clean_objective: str = "mlm"
    stand_in: str = "watched"
    poison_distance: str = "l2"
    epochs: int = 1
    batch_size: int = 8
    num_texts: int = 10_000


ATTACKS: dict[str, type[TaskAgnosticConfig]] = {"por": PORConfig, "neuba": NeuBAConfig, "btop": BToPConfig}


def attack_config(name: str, preset: str = "paper", **overrides: Any) -> TaskAgnosticConfig:
    """The config of attack ``name`` (``por``, ``neuba``, ``btop``) under ``preset`` with overrides."""
    if name not in ATTACKS:
        raise InputError(f"unknown attack {name!r}: use {', '.join(ATTACKS)}")
    return ATTACKS[name].preset(preset, **overrides)
