"""Settings of LMSanitator PV mining: one frozen dataclass, paper defaults, named presets."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from lmshield.errors import InputError, check_finite, check_whole, reject_unknown

MODES = ("detect", "search")
DISTANCE_SCALES = ("relative", "absolute")


@dataclass(frozen=True)
class SanitizerConfig:
    """How PV mining searches for predefined vectors and decides.

    Distances are ``relative`` by default: the mean squared distance between triggered and clean outputs
    divided by the mean squared distance between two clean outputs of different inputs (the spread of the
    model's clean outputs). One set of thresholds then serves models whose outputs differ in scale. The
    ``release`` preset restores the authors' absolute settings.

    A seed is given up after ``abandon_after_epoch`` epochs when its distance is below
    ``abandon_threshold``; a finished seed's PV is accepted when its distance reaches
    ``distance_threshold``, the outputs collapse (entropy across the batch at least
    ``collapse_threshold`` of its ceiling ln(batch_size), and at least ``min_sign_consistency`` of the
    triggered outputs match the PV's signs on 80 % of dimensions, as the monitor will need), the trigger
    is a legitimate embedding and the PV differs from every known one by more than
    ``uniqueness_threshold``.

    ``detect`` mode stops at the first group of seeds with an accepted PV and reports its PVs as they
    are after the search epochs; ``search`` mode tries every seed and refines each candidate to
    convergence (``refine_*``), which is what a guard built from the PVs needs, and then tries the
    sub-triggers of up to ``split_triggers`` vectors of every candidate (0: off), so a soft trigger that
    blends two planted triggers still yields one PV per trigger (see :mod:`.splitting`).
    """

    # soft trigger
    trigger_length: int = 7
    max_insert_word: int = 32
    # carrier text and batching
    num_carriers: int = 256
    max_length: int = 32
    batch_size: int = 32
    seeds_in_parallel: int | None = None  # None: 4 in detect mode, 1 in search mode
    # optimisation
    epochs: int = 4
    abandon_after_epoch: int = 2
    lr: float = 5e-4
    boost: float = 100.0
    boost_until_grad: float = 5e-3
    repetition_weight: float = 0.5
    project_trigger: bool = True
    refine_epochs: int = 4
    refine_lr_factor: float = 4.0
    refine_plateau: float = 0.05
    split_triggers: int = 2
    # decisions
    distance_scale: str = "relative"
    distance_threshold: float = 3.0
    abandon_threshold: float = 0.8
    uniqueness_threshold: float = 1.0
    collapse_threshold: float = 0.99
    min_sign_consistency: float = 0.9
    legitimacy_factor: float = 1.2
    # search
    mode: str = "detect"
    max_seeds: int = 24
    seed: int = 0
    nearest_tokens: int = 5

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InputError(f"unknown mode {self.mode!r}: use detect or search")
        if self.distance_scale not in DISTANCE_SCALES:
            raise InputError(f"unknown distance scale {self.distance_scale!r}: use relative or absolute")
        sizes = ("trigger_length", "num_carriers", "max_length", "batch_size", "epochs", "max_seeds")
        check_whole({name: getattr(self, name) for name in (*sizes, "nearest_tokens")})
        check_whole({"seed": self.seed}, minimum=0)  # seeds number the trace, which a saved result checks
        if self.split_triggers < 0:
            raise InputError(f"split_triggers must be 0 (off) or more, got {self.split_triggers}")
        if self.seeds_in_parallel is not None and self.seeds_in_parallel < 1:
            raise InputError(f"seeds_in_parallel must be at least 1, got {self.seeds_in_parallel}")
        if self.batch_size < 2:
            raise InputError("batch_size must be at least 2: collapse is measured across the batch")
        if not 0 < self.collapse_threshold <= 1:
            raise InputError("collapse_threshold is a share of the entropy ceiling, in (0, 1]")
        check_finite({"lr": self.lr, "boost": self.boost, "refine_lr_factor": self.refine_lr_factor}, positive=True)
        thresholds = ("distance_threshold", "abandon_threshold", "uniqueness_threshold", "legitimacy_factor")
        check_finite({name: getattr(self, name) for name in thresholds}, positive=True)
        if self.abandon_threshold > self.distance_threshold:
            raise InputError(
                f"abandon_threshold ({self.abandon_threshold}) must not exceed distance_threshold "
                f"({self.distance_threshold}): a seed past the bar would be given up"
            )
        if not 0 <= self.min_sign_consistency <= 1:
            raise InputError(f"min_sign_consistency is a share, in [0, 1], got {self.min_sign_consistency}")
        if self.num_carriers < self.batch_size:
            raise InputError(f"num_carriers ({self.num_carriers}) must be at least batch_size ({self.batch_size})")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> SanitizerConfig:
        """A named preset (``default``, ``fast``, ``release``) with optional overrides."""
        if name not in PRESETS:
            raise InputError(f"unknown preset {name!r}: use {', '.join(PRESETS)}")
        reject_unknown(cls, overrides, "scan")
        settings = {**PRESETS[name], **overrides}
        distance = overrides.get("distance_threshold")
        if isinstance(distance, int | float) and "abandon_threshold" not in overrides:
            # the preset's abandon threshold goes with its distance threshold (the release ties the two): keep
            # their ratio, or a seed that already clears a lowered bar would still be given up at the old one
            preset = cls(**PRESETS[name])
            settings["abandon_threshold"] = preset.abandon_threshold / preset.distance_threshold * distance
        return cls(**settings)

    @property
    def group_size(self) -> int:
        """Seeds optimised together in one batch.

        Detect mode batches 4 seeds for a fast verdict. Search mode runs seeds one after another so each
        one's repetition loss knows every PV found before it: on MiniLM-L6 with six planted POR vectors,
        8 sequential seeds recovered 3 of them (sign agreement >= 0.99), 8 seeds in groups of 4 only 1.
        """
        if self.seeds_in_parallel is not None:
            return self.seeds_in_parallel
        return 4 if self.mode == "detect" else 1

    def replace(self, **changes: Any) -> SanitizerConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SanitizerConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def search_fingerprint(self) -> dict[str, Any]:
        """The settings that change what one seed computes (resume is only valid when they match)."""
        ignored = {"mode", "max_seeds", "nearest_tokens", "seeds_in_parallel", "split_triggers"}
        kept = {k: v for k, v in self.to_dict().items() if k not in ignored}
        return {**kept, "group_size": self.group_size, "refines": self.mode == "search"}


PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    # smoke-test speed: fewer carriers and steps, still the same decision rules
    "fast": {"num_carriers": 128, "max_length": 24, "epochs": 3, "max_seeds": 8},
    # the authors' release, BERT settings: 2,000 carriers of length 128, absolute thresholds
    "release": {
        "num_carriers": 2000,
        "max_length": 128,
        "batch_size": 32,
        "seeds_in_parallel": 1,
        "epochs": 4,
        "lr": 5e-5,
        "distance_scale": "absolute",
        "distance_threshold": 0.2,
        "abandon_threshold": 0.2,
        "uniqueness_threshold": 0.2,
        "min_sign_consistency": 0.0,
        "refine_epochs": 0,
        "project_trigger": False,
        "collapse_threshold": 3.446 / 3.4657359,
        "max_seeds": 30,
    },
}
