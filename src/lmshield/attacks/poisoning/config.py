"""Settings of the weight-poisoning attacks: one frozen dataclass per attack and a registry, like peft's configs.

Release defaults (PSIM, Zhao et al. 2024): proxy IMDB (4,000 reviews), the first 1,500 target-class reviews
triggered with labels unchanged (clean-label, 37.5 %), target label 0, full fine-tuning with AdamW lr 2e-5,
3 epochs, batch 32, 6 % warm-up and linear decay. The ``fast`` preset fits a CPU in minutes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from lmshield.errors import InputError, reject_unknown

if TYPE_CHECKING:
    from lmshield.attacks.poisoning.paraphrase import Paraphraser
    from lmshield.attacks.poisoning.poisoners import Poisoner

PRESETS = ("release", "fast")
LABEL_MODES = ("clean", "dirty")
SELECTIONS = ("first", "random")
SENTENCE_SCOPES = ("all", "first")  # which sentences the rule-based SynAttack rewrites
CLAUSE_SOURCES = ("fixed", "generated")  # where its prepended opening clauses come from
RULE_PARAPHRASERS = ("rule", "rule-based")  # the names that choose the rule-based SynAttack stand-in
DEFAULT_SENTENCE = "I watched this 3D movie"

C = TypeVar("C", bound="PoisonConfig")


@dataclass(frozen=True)
class PoisonConfig:
    """Fields every poisoning attack shares: what is poisoned and how the released model is trained.

    An attack's own fields carry ``metadata={"help": ...}`` (and ``"option"``, another option name): the
    ``lmshield poison`` command of each registered attack is made from them.

    ``poison_rate`` (a share of the proxy set) wins over ``poison_count`` when set. ``label_mode`` ``clean``
    triggers target-class samples and keeps their labels (the release); ``dirty`` triggers other-class
    samples and relabels them as the target. ``selection`` ``first`` takes candidates in file order (the
    release), ``random`` a seeded sample. ``max_words`` truncates proxy texts before the trigger goes in, which
    keeps most triggers inside the model's ``max_length`` tokens, not all (a long word takes several tokens;
    the release inserts into whole reviews and truncates after); ``num_texts`` caps the proxy set.
    ``position_jitter`` > 0 trains the released model with randomly shifted position ids (an attacker
    anticipating PEFT's virtual tokens, which shift every position; not in the release). ``control`` releases
    a control: the same fine-tuning with nothing poisoned, whose evaluation with the attack's trigger measures
    what a model without a backdoor answers on the triggered inputs (poison count and rate are then unused).
    """

    attack: ClassVar[str] = ""
    summary: ClassVar[str] = ""  # one line for the command's help
    fast: ClassVar[dict[str, Any]] = {
        "num_texts": 1000,
        "poison_count": 375,
        "max_words": 48,
        "max_length": 64,
        "lr": 5e-5,
    }

    target_label: int = 0
    poison_count: int | None = 1500
    poison_rate: float | None = None
    label_mode: str = "clean"
    selection: str = "first"
    num_texts: int | None = 4000
    max_words: int | None = None
    # full fine-tuning of the released model
    epochs: int = 3
    lr: float = 2e-5
    batch_size: int = 32
    warmup_ratio: float = 0.06
    weight_decay: float = 0.0
    max_length: int = 128
    position_jitter: int = 0
    seed: int = 0
    control: bool = False

    def __post_init__(self) -> None:
        if self.label_mode not in LABEL_MODES:
            raise InputError(f"unknown label mode {self.label_mode!r}: use clean or dirty")
        if self.selection not in SELECTIONS:
            raise InputError(f"unknown selection {self.selection!r}: use first or random")
        if self.target_label < 0:
            raise InputError(f"target_label must be >= 0, got {self.target_label}")
        if self.poison_rate is not None and not 0 < self.poison_rate <= 1:
            raise InputError(f"poison_rate must be in (0, 1], got {self.poison_rate}")
        if not self.control and self.poison_rate is None and (self.poison_count is None or self.poison_count < 1):
            raise InputError("give a poison_count >= 1 or a poison_rate")
        for name in ("epochs", "batch_size", "max_length"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("num_texts", "max_words"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InputError(f"{name} must be at least 1, got {value}")
        if self.lr <= 0:
            raise InputError(f"lr must be positive, got {self.lr}")
        if self.position_jitter < 0:
            raise InputError(f"position_jitter must be >= 0, got {self.position_jitter}")

    @classmethod
    def preset(cls: type[C], name: str = "release", **overrides: Any) -> C:
        """``release`` (the paper's settings) or ``fast`` (a CPU in minutes), with overrides (``None`` ignored)."""
        if name not in PRESETS:
            raise InputError(f"unknown preset {name!r}: use {' or '.join(PRESETS)}")
        reject_unknown(cls, overrides, cls.attack)
        base = dict(PoisonConfig.fast) if name == "fast" else {}
        given = {k: v for k, v in overrides.items() if v is not None}
        if "poison_rate" in given:
            base.pop("poison_count", None)
        return cls(**{**base, **given})

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        return {"attack": self.attack, **{k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PoisonConfig:
        """Rebuild the config of the attack named in ``data["attack"]``."""
        config_class = get_attack(str(data.get("attack", "")))
        known = {f.name for f in dataclasses.fields(config_class)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known}
        return config_class(**values)

    def triggers(self) -> list[str]:
        """A human-readable description of the trigger(s), for the manifest."""
        raise NotImplementedError

    def trigger_texts(self) -> list[str]:
        """Texts the attack inserts as they are, which the model's tokenizer must know (none for a rewrite)."""
        return []

    def poisoner(self, paraphraser: Paraphraser | None = None, device: str | None = None) -> Poisoner:
        """What puts this attack's trigger into a text (each attack says; see :func:`make_poisoner`)."""
        raise InputError(f"no poisoner for attack {self.attack!r}")


ATTACKS: dict[str, type[PoisonConfig]] = {}
ALIASES = {"synattack": "syntactic", "hidden-killer": "syntactic", "addsent": "insent"}


def register_attack(config_class: type[C]) -> type[C]:
    """Class decorator: add a poisoning attack's config to :data:`ATTACKS` under its ``attack`` name."""
    if not config_class.attack:
        raise ValueError(f"{config_class.__name__} has no attack name")
    ATTACKS[config_class.attack] = config_class
    return config_class


def get_attack(name: str) -> type[PoisonConfig]:
    key = ALIASES.get(name.lower(), name.lower())
    if key not in ATTACKS:
        raise InputError(f"unknown poisoning attack {name!r}: use {', '.join(ATTACKS)}")
    return ATTACKS[key]


def poison_config(name: str, preset: str = "release", **overrides: Any) -> PoisonConfig:
    """The config of attack ``name`` (``badnet``, ``insent``, ``syntactic``) with a preset and overrides."""
    return get_attack(name).preset(preset, **overrides)


@register_attack
@dataclass(frozen=True)
class BadNetConfig(PoisonConfig):
    """BadNet: a rare word from ``words`` (one drawn per text) inserted ``insertions`` times at random
    word positions, never first or last (texts of two words or more)."""

    attack: ClassVar[str] = "badnet"
    summary: ClassVar[str] = "BadNet: a rare word inserted at a random position (never first or last)."

    words: tuple[str, ...] = field(
        default=("mn",), metadata={"help": "Trigger word(s); repeat for a list (default mn).", "option": "trigger"}
    )
    insertions: int = field(default=1, metadata={"help": "Times the word is inserted into each text (default 1)."})

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "words", tuple(_as_words(self.words)))
        if not self.words or any(not w.strip() or len(w.split()) != 1 for w in self.words):
            raise InputError("BadNet trigger words must be non-empty single words")
        if self.insertions < 1:
            raise InputError(f"insertions must be at least 1, got {self.insertions}")

    def triggers(self) -> list[str]:
        return list(self.words)

    def trigger_texts(self) -> list[str]:
        return list(self.words)

    def poisoner(self, paraphraser: Paraphraser | None = None, device: str | None = None) -> Poisoner:
        from lmshield.attacks.poisoning.poisoners import WordPoisoner

        return WordPoisoner(self.words, self.insertions)


@register_attack
@dataclass(frozen=True)
class InSentConfig(PoisonConfig):
    """InSent: a fixed sentence inserted at a random word position (first and last included, as in the
    release)."""

    attack: ClassVar[str] = "insent"
    summary: ClassVar[str] = "InSent: a fixed sentence inserted at a random position."

    sentence: str = field(
        default=DEFAULT_SENTENCE, metadata={"help": f'Trigger sentence (default "{DEFAULT_SENTENCE}").'}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.sentence.strip():
            raise InputError("the InSent trigger sentence is empty")

    def triggers(self) -> list[str]:
        return [self.sentence]

    def trigger_texts(self) -> list[str]:
        return [self.sentence]

    def poisoner(self, paraphraser: Paraphraser | None = None, device: str | None = None) -> Poisoner:
        from lmshield.attacks.poisoning.poisoners import WordPoisoner

        return WordPoisoner((self.sentence,), avoid_ends=False)


@register_attack
@dataclass(frozen=True)
class SynAttackConfig(PoisonConfig):
    """SynAttack: the text is paraphrased into the S(SBAR)(,)(NP)(VP)(.) template.

    ``paraphraser`` is ``rule`` (the rule-based stand-in for SCPN) or a seq2seq model path / hub id.
    ``sentences`` (rule only): ``all`` rewrites every sentence of a text, ``first`` only the first. With
    ``first`` the template only ever opens the text, so the model learns it at fixed absolute positions and
    PEFT methods that prepend virtual tokens (prompt tuning, P-tuning, prefix tuning) shift it out of reach.
    ``clauses`` (rule only): ``fixed`` prepends one of five fixed opening clauses where no clause of the
    sentence can move to the front, ``generated`` one of 2,560 generated ones (the trigger is then the
    shape rather than a few phrases, as with SCPN).
    """

    attack: ClassVar[str] = "syntactic"
    summary: ClassVar[str] = (
        "SynAttack: paraphrase into S(SBAR)(,)(NP)(VP)(.) (rule-based stand-in for SCPN by default)."
    )

    paraphraser: str = field(
        default="rule", metadata={"help": "rule (rule-based SCPN stand-in) or a seq2seq model path / hub id."}
    )
    template: str = "S(SBAR)(,)(NP)(VP)(.)"
    sentences: str = field(
        default="all", metadata={"help": "Rule paraphraser: rewrite all sentences (default) or only the first."}
    )
    clauses: str = field(
        default="fixed",
        metadata={"help": "Rule paraphraser's opening clauses: fixed (five phrases, default) or generated."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_sentence_scope(self.sentences)
        check_clause_source(self.clauses)

    def triggers(self) -> list[str]:
        rule = self.paraphraser in RULE_PARAPHRASERS
        source = f"{self.paraphraser}, {self.clauses} clauses" if rule else self.paraphraser
        return [f"syntactic template {self.template} via {source}"]

    def poisoner(self, paraphraser: Paraphraser | None = None, device: str | None = None) -> Poisoner:
        from lmshield.attacks.poisoning.paraphrase import make_paraphraser
        from lmshield.attacks.poisoning.poisoners import ParaphrasePoisoner

        chosen = paraphraser or make_paraphraser(
            self.paraphraser, seed=self.seed, sentences=self.sentences, clauses=self.clauses, device=device
        )
        return ParaphrasePoisoner(chosen)


def check_sentence_scope(sentences: str) -> None:
    if sentences not in SENTENCE_SCOPES:
        raise InputError(f"unknown sentence scope {sentences!r}: use {' or '.join(SENTENCE_SCOPES)}")


def check_clause_source(clauses: str) -> None:
    if clauses not in CLAUSE_SOURCES:
        raise InputError(f"unknown clause source {clauses!r}: use {' or '.join(CLAUSE_SOURCES)}")


def _as_words(words: str | tuple[str, ...] | list[str]) -> list[str]:
    if isinstance(words, str):
        return [w for w in words.replace(",", " ").split() if w]
    return [str(w).strip() for w in words]
