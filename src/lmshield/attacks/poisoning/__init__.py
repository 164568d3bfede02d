"""Weight-poisoning attacks on classifiers (BadNet, InSent, SynAttack), as in the PSIM paper's threat model.

Pick a config (:func:`poison_config` or a config class, ``release`` or ``fast`` preset), then
:func:`poison_model` poisons a labelled proxy set, fully fine-tunes the model on it (through
:mod:`lmshield.tuning`) and releases the weights with a ``backdoor.json`` manifest.

Names are imported on first use, so listing the attacks (as ``lmshield poison --help`` does) does not load torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lmshield._lazy import lazy_exports

_EXPORTS = {
    "lmshield.attacks.manifest": ("BACKDOOR_JSON",),
    "lmshield.attacks.poisoning.config": (
        "ATTACKS",
        "BadNetConfig",
        "InSentConfig",
        "PoisonConfig",
        "SynAttackConfig",
        "get_attack",
        "poison_config",
        "register_attack",
    ),
    "lmshield.attacks.poisoning.dataset": ("PoisonedData", "poison_dataset", "prepare_proxy", "triggered_test_set"),
    "lmshield.attacks.poisoning.paraphrase": (
        "TEMPLATE",
        "Paraphraser",
        "RuleBasedSyntacticParaphraser",
        "Seq2SeqParaphraser",
        "make_paraphraser",
        "matches_template",
    ),
    "lmshield.attacks.poisoning.poisoners": ("ParaphrasePoisoner", "Poisoner", "WordPoisoner", "make_poisoner"),
    "lmshield.attacks.poisoning.runner": ("PoisonManifest", "PoisonResult", "poison_model", "release"),
}
__all__ = [
    "ATTACKS",
    "BACKDOOR_JSON",
    "TEMPLATE",
    "BadNetConfig",
    "InSentConfig",
    "ParaphrasePoisoner",
    "Paraphraser",
    "PoisonConfig",
    "PoisonManifest",
    "PoisonResult",
    "PoisonedData",
    "Poisoner",
    "RuleBasedSyntacticParaphraser",
    "Seq2SeqParaphraser",
    "SynAttackConfig",
    "WordPoisoner",
    "get_attack",
    "make_paraphraser",
    "make_poisoner",
    "matches_template",
    "poison_config",
    "poison_dataset",
    "poison_model",
    "prepare_proxy",
    "register_attack",
    "release",
    "triggered_test_set",
]

if TYPE_CHECKING:
    from lmshield.attacks.manifest import BACKDOOR_JSON
    from lmshield.attacks.poisoning.config import (
        ATTACKS,
        BadNetConfig,
        InSentConfig,
        PoisonConfig,
        SynAttackConfig,
        get_attack,
        poison_config,
        register_attack,
    )
    from lmshield.attacks.poisoning.dataset import PoisonedData, poison_dataset, prepare_proxy, triggered_test_set
    from lmshield.attacks.poisoning.paraphrase import (
        TEMPLATE,
        Paraphraser,
        RuleBasedSyntacticParaphraser,
        Seq2SeqParaphraser,
        make_paraphraser,
        matches_template,
    )
    from lmshield.attacks.poisoning.poisoners import ParaphrasePoisoner, Poisoner, WordPoisoner, make_poisoner
    from lmshield.attacks.poisoning.runner import PoisonManifest, PoisonResult, poison_model, release


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
