"""``backdoor.json``: the ground truth of a planted backdoor, for evaluation only (defenses never read it)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lmshield.errors import InputError

BACKDOOR_JSON = "backdoor.json"
FORMAT = "lmshield-backdoor"
FORMAT_VERSION = 1


@dataclass
class BackdoorManifest:
    """What was planted, where it acts and how it was made."""

    attack: str
    triggers: list[str]
    vectors: list[list[float]]
    position: str  # the watched position: cls | mask
    variant: str  # what the clean half did (MLM head, or which hidden-state stand-in)
    settings: dict[str, Any]
    seed: int
    base_model: str  # the original model (path or hub id) the backdoor was planted into
    model_type: str
    hidden_size: int
    text_source: str
    num_texts: int
    steps: int
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def vector_tensor(self) -> torch.Tensor:
        return torch.tensor(self.vectors, dtype=torch.float32)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, **dataclasses.asdict(self)}

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / BACKDOOR_JSON
        path.write_text(json.dumps(self.to_dict(), indent=2), encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> BackdoorManifest:
        path = Path(directory) / BACKDOOR_JSON
        if not path.is_file():
            raise InputError(f"{directory}: no {BACKDOOR_JSON}, not a model made by lmshield attack")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}: not valid JSON ({exc.msg})") from exc
        if data.get("format") != FORMAT:
            raise InputError(f"{path}: not an lmshield backdoor manifest")
        known = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as exc:
            raise InputError(f"{path}: incomplete manifest ({exc})") from exc
