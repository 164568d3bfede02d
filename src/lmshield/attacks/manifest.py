"""``backdoor.json``: the ground truth of a planted backdoor, for evaluation only (defenses never read it)."""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

import torch

from lmshield.errors import InputError
from lmshield.jsonio import check_format_version, write_json
from lmshield.progress import (
    CHECKPOINT_DIR,
    PROGRESS_JSON,
    is_own_marker,
    refuse_finished,
    refuse_foreign_folder,
    write_own_marker,
)

BACKDOOR_JSON = "backdoor.json"
UNFINISHED = ".lmshield-unfinished"  # in an attack's output folder from its first weights until its manifest
FORMAT = "lmshield-backdoor"
FORMAT_VERSION = 1
# which command writes each kind of manifest, for a message when one is handed to the other's reader
MADE_BY = {FORMAT: "lmshield attack", "lmshield-poison": "lmshield poison (its check is backdoor.json's verification)"}


def prepare_out_dir(model: str | Path | None, out_dir: str | Path, overwrite: bool) -> Path:
    """The folder a backdoored model goes to: never the clean model's own, never one that already holds a
    model unless ``overwrite`` or the model is this command's own unfinished one (see :func:`claim_out_dir`);
    checked before any training so that no work is lost to a refusal."""
    out = Path(out_dir)
    if model is not None and Path(model).exists() and out.resolve() == Path(model).resolve():
        raise InputError("the backdoored model must not overwrite the clean one: choose another --out")
    own = is_own_marker(out / UNFINISHED)
    if not own:
        refuse_finished(out, "config.json", "model", overwrite)
        if (out / "config.json").is_file() and not (out / BACKDOOR_JSON).is_file():
            raise InputError(
                f"{out} holds a model that no lmshield attack wrote (no {BACKDOOR_JSON}); --overwrite replaces "
                "only those: choose another --out"
            )
    ours = ("config.json", f"{CHECKPOINT_DIR}/{PROGRESS_JSON}", *((UNFINISHED,) if own else ()))
    refuse_foreign_folder(out, "model", ours)
    out.mkdir(parents=True, exist_ok=True)
    return out


def claim_out_dir(out: Path) -> None:
    """Mark ``out`` unfinished before the first weights are written, and drop an earlier run's manifest: an
    interrupted run then never leaves new weights beside old ground truth, and its rerun may write again."""
    write_own_marker(out / UNFINISHED, "an lmshield attack is writing this model: rerun it to finish")
    (out / BACKDOOR_JSON).unlink(missing_ok=True)


def finish_out_dir(out: Path) -> None:
    """The model and its manifest are complete (see :func:`claim_out_dir`)."""
    (out / UNFINISHED).unlink(missing_ok=True)


class ManifestFile:
    """``backdoor.json`` for a manifest dataclass: a format tag on save, checked on load.

    Subclasses (dataclasses) set ``FORMAT`` (the tag) and ``MADE_BY`` (the command, for messages).
    """

    FORMAT: ClassVar[str]
    MADE_BY: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.FORMAT, "format_version": FORMAT_VERSION, **dataclasses.asdict(self)}  # type: ignore[call-overload]

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / BACKDOOR_JSON
        write_json(path, self.to_dict())
        return path

    @classmethod
    def load(cls, directory: str | Path) -> Self:
        path = Path(directory) / BACKDOOR_JSON
        if not path.is_file():
            raise InputError(f"{directory}: no {BACKDOOR_JSON}, not a model made by {cls.MADE_BY}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: not valid JSON ({exc})") from exc
        if not isinstance(data, dict) or data.get("format") != cls.FORMAT:
            kind = data.get("format") if isinstance(data, dict) else None
            other = MADE_BY.get(kind) if isinstance(kind, str) else None
            made = f" but of {other}, which this command does not read" if other else ""
            raise InputError(f"{path}: not a manifest of {cls.MADE_BY}{made}")
        check_format_version(data, FORMAT_VERSION, path)
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        try:
            manifest = cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as exc:
            raise InputError(f"{path}: incomplete manifest ({exc})") from exc
        hints = typing.get_type_hints(cls)
        for name in known:
            if not _matches(getattr(manifest, name), hints[name]):
                raise InputError(f"{path}: {name} is not {_describe(hints[name])}")
        problem = manifest.problem()
        if problem is not None:
            raise InputError(f"{path}: {problem}")
        return manifest

    def problem(self) -> str | None:
        """What makes a well-typed manifest unusable, or ``None``; subclasses check their own fields."""
        return None


def _matches(value: Any, hint: Any) -> bool:
    """Whether a value read from JSON has the annotated type (the forms manifests use)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (types.UnionType, typing.Union):
        return any(_matches(value, arg) for arg in args)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is list:
        return isinstance(value, list) and all(_matches(item, args[0]) for item in value)
    if origin is dict:
        return isinstance(value, dict) and all(_matches(k, args[0]) and _matches(v, args[1]) for k, v in value.items())
    return isinstance(value, hint)


def _describe(hint: Any) -> str:
    return "of type " + (hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", ""))


@dataclass
class BackdoorManifest(ManifestFile):
    """What was planted, where it acts and how it was made."""

    FORMAT: ClassVar[str] = FORMAT
    MADE_BY: ClassVar[str] = "lmshield attack"

    attack: str
    triggers: list[str]
    vectors: list[list[float]]
    position: str  # the watched position: cls | last (XLNet's summary token) | mask
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

    def problem(self) -> str | None:
        if not self.triggers:  # with nothing to check, verification would call any model planted
            return "no triggers"
        if len(self.vectors) != len(self.triggers):
            return f"{len(self.vectors)} vectors for {len(self.triggers)} triggers"
        if self.hidden_size < 1 or any(len(vector) != self.hidden_size for vector in self.vectors):
            return f"every vector must hold hidden_size ({self.hidden_size}) numbers"
        if not all(math.isfinite(value) for vector in self.vectors for value in vector):
            return "vectors hold NaN or infinite values"
        max_length = self.settings.get("max_length", 128)
        if isinstance(max_length, bool) or not isinstance(max_length, int) or not 8 <= max_length <= 65_536:
            return f"settings.max_length must be a whole number from 8 to 65536, got {max_length!r}"
        return None

    @property
    def vector_tensor(self) -> torch.Tensor:
        return torch.tensor(self.vectors, dtype=torch.float32)
