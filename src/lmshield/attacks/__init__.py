"""Attacks used to test the defenses. Defenses never import this package.

Task-agnostic backdoors (POR, NeuBA, BToP): pick a config from :data:`ATTACKS` (``paper`` or ``fast``
preset), then :func:`run_attack` plants, saves (safetensors + ``backdoor.json``) and verifies.

Names are imported on first use, so listing the attacks (as ``lmshield --help`` does) does not load torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lmshield._lazy import lazy_exports

_EXPORTS = {
    "lmshield.attacks.configs": (
        "ATTACKS",
        "BToPConfig",
        "NeuBAConfig",
        "PORConfig",
        "TaskAgnosticConfig",
        "attack_config",
    ),
    "lmshield.attacks.manifest": ("BACKDOOR_JSON", "BackdoorManifest"),
    "lmshield.attacks.runner": ("AttackResult", "run_attack"),
    "lmshield.attacks.task_agnostic": ("PlantPlan", "plant"),
    "lmshield.attacks.vectors": ("DEFAULT_TRIGGERS", "quarter_vectors", "random_triggers", "resolve_triggers"),
    "lmshield.attacks.verify": ("TriggerCheck", "Verification", "verify_backdoor"),
}

__all__ = [
    "ATTACKS",
    "BACKDOOR_JSON",
    "DEFAULT_TRIGGERS",
    "AttackResult",
    "BToPConfig",
    "BackdoorManifest",
    "NeuBAConfig",
    "PORConfig",
    "PlantPlan",
    "TaskAgnosticConfig",
    "TriggerCheck",
    "Verification",
    "attack_config",
    "plant",
    "quarter_vectors",
    "random_triggers",
    "resolve_triggers",
    "run_attack",
    "verify_backdoor",
]

if TYPE_CHECKING:
    from lmshield.attacks.configs import ATTACKS, BToPConfig, NeuBAConfig, PORConfig, TaskAgnosticConfig, attack_config
    from lmshield.attacks.manifest import BACKDOOR_JSON, BackdoorManifest
    from lmshield.attacks.runner import AttackResult, run_attack
    from lmshield.attacks.task_agnostic import PlantPlan, plant
    from lmshield.attacks.vectors import DEFAULT_TRIGGERS, quarter_vectors, random_triggers, resolve_triggers
    from lmshield.attacks.verify import TriggerCheck, Verification, verify_backdoor


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
