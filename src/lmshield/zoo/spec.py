"""The declarative zoo spec (YAML) and its expansion into one entry per model.

```yaml
name: minilm-small
base_model: null            # path or hub id; null = embedded all-MiniLM-L6-v2
text: {generator: grammar}  # carrier text for attacks and clean training: texts/field, dataset/split/column
models:
  - kind: original          # the untouched base model (clean)
  - kind: clean-continue    # the attack loop without its trigger half (clean)
    attack: por             # whose loop and settings to use
    preset: fast
    seed: [0, 1]            # list-valued fields expand into one model per combination
  - kind: clean-finetune    # a classification fine-tune of the whole encoder (clean)
    data: ../shared/data/sst-2/train.json
    preset: fast
  - kind: attack            # a backdoored model
    attack: [por, neuba, btop]
    triggers: [default, random]   # a trigger set: default, random (seeded) or a list, e.g. [[cf, mn]]
    seed: [0, 1]
    preset: fast
    overrides: {lr: 1e-4}   # any field of the attack's (or fine-tune's) config
scan:
  preset: default           # SanitizerConfig preset
  position: auto            # the same for every model: the scanner is not told how a model was made
  overrides: {max_seeds: 8}
```
Relative paths are read from the spec file's folder when they exist there, else from the working directory.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lmshield.errors import InputError
from lmshield.text.sources import TextSource

KINDS = ("original", "clean-continue", "clean-finetune", "attack")
_ENTRY_KEYS = {"kind", "attack", "triggers", "seed", "preset", "overrides", "data", "text_field", "label_field"}
_TOP_KEYS = {"name", "base_model", "text", "models", "scan"}
TEXT_KEYS = ("texts", "field", "dataset", "split", "column", "generator")  # TextSource.from_options


@dataclass(frozen=True)
class ModelEntry:
    """One model of the zoo, fully expanded."""

    kind: str
    attack: str | None = None
    triggers: str | list[str] | None = None
    seed: int = 0
    preset: str = "fast"
    overrides: dict[str, Any] = field(default_factory=dict)
    data: str | None = None
    text_field: str = "sentence"
    label_field: str = "label"

    @property
    def truth(self) -> str:
        return "backdoored" if self.kind == "attack" else "clean"

    def describe_triggers(self) -> str:
        if self.kind != "attack":
            return ""
        return self.triggers if isinstance(self.triggers, str) else " ".join(self.triggers or [])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ZooSpec:
    """A zoo: base model, carrier text, models to build and how to scan them."""

    name: str
    base_model: str | None
    text: dict[str, Any]
    entries: list[ModelEntry]
    scan: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "base_model": self.base_model,
            "text": self.text,
            "entries": [e.to_dict() for e in self.entries],
            "scan": self.scan,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ZooSpec:
        """Read back :meth:`to_dict` (entries already expanded)."""
        return cls(
            name=data["name"],
            base_model=data["base_model"],
            text=data["text"],
            entries=[ModelEntry(**e) for e in data["entries"]],
            scan=data["scan"],
        )


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


TRIGGER_KEYWORDS = ("default", "random")


def _trigger_sets(value: Any, number: int) -> list[str | list[str]]:
    """``default`` / ``random`` / a list of sets, where a set is default, random, one trigger or a list of triggers.

    Triggers are strings: a number or a mapping would be written out as text and planted as such, so it is refused.
    """
    where = f"models[{number}].triggers"
    if value is None:
        return ["default"]
    if isinstance(value, str):
        if value not in TRIGGER_KEYWORDS:
            raise InputError(f"{where}: use default, random or a list of trigger sets, got {value!r}")
        return [value]
    if not isinstance(value, list) or not value:
        raise InputError(f"{where}: use default, random or a non-empty list of trigger sets, got {value!r}")
    sets: list[str | list[str]] = []
    for item in value:
        if isinstance(item, str) and item in TRIGGER_KEYWORDS:
            sets.append(item)
            continue
        triggers = [item] if isinstance(item, str) else item
        if not isinstance(triggers, list) or not triggers or not all(isinstance(t, str) for t in triggers):
            raise InputError(
                f"{where}: a trigger set is default, random, a trigger or a list of triggers (strings), got {item!r}"
            )
        stripped = [t.strip() for t in triggers]  # as the attack reads them
        if not all(stripped) or len(set(stripped)) != len(stripped):
            raise InputError(f"{where}: triggers must be distinct non-empty strings, got {triggers!r}")
        sets.append(list(triggers))
    return sets


def _resolve_path(value: str | None, base: Path) -> str | None:
    if value is None:
        return None
    candidate = (base / value).expanduser()
    if not Path(value).is_absolute() and candidate.exists():
        return str(candidate.resolve())
    return value


def _check_settings(kind: str, attacks: list[Any], preset: str, overrides: dict[str, Any], number: int) -> None:
    """Build each entry's config once, so that a bad preset or override stops the spec, not a half-built zoo."""
    from lmshield.attacks.configs import attack_config
    from lmshield.zoo.finetune import FinetuneConfig

    if "preset" in overrides:
        raise InputError(f"models[{number}]: give 'preset' beside 'overrides', not inside them")
    try:
        if kind == "clean-finetune":
            FinetuneConfig.preset(preset, **overrides)
        for attack in attacks if kind in ("attack", "clean-continue") else ():
            attack_config(str(attack), preset, **overrides)
    except InputError as exc:
        raise InputError(f"models[{number}]: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise InputError(f"models[{number}]: bad overrides ({exc})") from None


def _expand(raw: dict[str, Any], base: Path, number: int) -> list[ModelEntry]:
    if not isinstance(raw, dict):
        raise InputError(f"models[{number}] must be a mapping with a 'kind'")
    unknown = sorted(set(raw) - _ENTRY_KEYS)
    if unknown:
        raise InputError(f"models[{number}]: unknown key(s) {', '.join(unknown)}")
    kind = raw.get("kind")
    if kind not in KINDS:
        raise InputError(f"models[{number}]: kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if kind == "clean-finetune" and not raw.get("data"):
        raise InputError(f"models[{number}]: clean-finetune needs 'data' (a JSON Lines file)")
    if kind == "attack" and not raw.get("attack"):
        raise InputError(f"models[{number}]: an attack entry needs 'attack' (por, neuba, btop)")
    if not all(isinstance(seed, int) for seed in _as_list(raw.get("seed", 0))):
        raise InputError(f"models[{number}]: seed must be an integer or a list of integers")
    overrides = raw.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise InputError(f"models[{number}]: overrides must be a mapping")
    attacks = _as_list(raw.get("attack") or ("por" if kind == "clean-continue" else None))
    preset = str(raw.get("preset", "fast"))
    _check_settings(kind, attacks, preset, overrides, number)
    triggers = _trigger_sets(raw.get("triggers"), number) if kind == "attack" else [None]
    seeds = _as_list(raw.get("seed", 0))
    entries = []
    for attack, trigger_set, seed in itertools.product(attacks, triggers, seeds):
        entries.append(
            ModelEntry(
                kind=kind,
                attack=attack if kind in ("attack", "clean-continue") else None,
                triggers=trigger_set,
                seed=int(seed),
                preset=preset,
                overrides=dict(overrides),
                data=_resolve_path(raw.get("data"), base),
                text_field=str(raw.get("text_field", "sentence")),
                label_field=str(raw.get("label_field", "label")),
            )
        )
    return entries


def text_source_of(options: dict[str, Any]) -> TextSource:
    """The carrier texts a spec's ``text`` section names (keys as :meth:`TextSource.from_options` takes them)."""
    return TextSource.from_options(
        options.get("texts"),
        options.get("dataset"),
        generator=options.get("generator"),
        field=options.get("field"),
        split=options.get("split"),
        column=options.get("column"),
    )


SCAN_KEYS = ("preset", "position", "overrides", "text")  # what zoo scan reads of a spec's scan section


def _check_text(text: dict[str, Any]) -> None:
    """Refuse a carrier-text section that no build could read (an unknown key or generator, a stray option),
    here rather than in the middle of a build."""
    unknown = sorted(set(text) - set(TEXT_KEYS), key=str)
    if unknown:
        raise InputError(f"zoo spec: text: unknown key(s) {', '.join(map(str, unknown))}; use {', '.join(TEXT_KEYS)}")
    for key, value in text.items():
        if not isinstance(value, str):
            raise InputError(f"zoo spec: text.{key} must be a string, got {value!r}")
    try:
        text_source_of(text)
    except InputError as exc:  # its messages name command-line options: --split, ...; the spec's keys have no --
        raise InputError(f"zoo spec: text: {str(exc).removeprefix('--')}") from None


def parse_spec(data: dict[str, Any], base: Path | None = None) -> ZooSpec:
    """Validate and expand a spec mapping (as read from YAML)."""
    base = base or Path.cwd()
    if not isinstance(data, dict) or not isinstance(data.get("models"), list) or not data["models"]:
        raise InputError("a zoo spec needs a non-empty 'models' list")
    for key in ("text", "scan"):
        if not isinstance(data.get(key) or {}, dict):
            raise InputError(f"zoo spec: '{key}' must be a mapping")
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise InputError(f"zoo spec: unknown key(s) {', '.join(unknown)}")
    text = dict(data.get("text") or {})
    _check_text(text)
    if "texts" in text:
        text["texts"] = _resolve_path(text["texts"], base)
    base_model = data.get("base_model")
    entries = [e for number, raw in enumerate(data["models"]) for e in _expand(raw, base, number)]
    scan = dict(data.get("scan") or {})
    _check_scan(scan)
    return ZooSpec(
        name=str(data.get("name", "zoo")),
        base_model=_resolve_path(str(base_model), base) if base_model else None,
        text=text,
        entries=entries,
        scan=scan,
    )


def _check_scan(scan: dict[str, Any]) -> None:
    """Refuse a ``scan`` section that ``zoo scan`` could not run, when the spec is read (before any build)."""
    from lmshield.defenses.sanitizer import SanitizerConfig
    from lmshield.models.positions import WatchedPosition

    unknown = sorted(set(scan) - set(SCAN_KEYS), key=str)
    if unknown:
        raise InputError(f"zoo spec: scan: unknown key(s) {', '.join(map(str, unknown))}; use {', '.join(SCAN_KEYS)}")
    overrides = scan.get("overrides") or {}
    if not isinstance(overrides, dict) or not isinstance(scan.get("text") or {}, dict):
        raise InputError("zoo spec: scan.overrides and scan.text must be mappings")
    try:
        SanitizerConfig.preset(str(scan.get("preset", "default")), **overrides)
        position = scan.get("position", "auto")
        names = position.split(",") if isinstance(position, str) else [str(name) for name in position]
        for name in (name.strip() for name in names):  # as zoo scan reads them: empty items dropped
            if name:
                WatchedPosition.parse(name)
    except (InputError, TypeError) as exc:
        raise InputError(f"zoo spec: scan: {exc}") from None
    _check_text(dict(scan.get("text") or {}))


class SpecLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading ``1e-4`` and ``2E3`` as numbers: YAML 1.1 wants a dot and a signed exponent
    (``1.0e-4``), so ``lr: 1e-4`` came back as the string '1e-4', while YAML 1.2 and JSON read a float."""


SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def load_spec(path: str | Path) -> ZooSpec:
    """Read a YAML zoo spec."""
    file = Path(path)
    if not file.is_file():
        raise InputError(f"{path}: no such spec file")
    try:
        data = yaml.load(file.read_text(encoding="utf-8"), Loader=SpecLoader)  # safe: a SafeLoader
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid YAML text ({exc})") from exc
    if _too_many_values(data):
        raise InputError(f"{path}: more than {MAX_SPEC_VALUES:,} values once its aliases (*name) are expanded")
    return parse_spec(data, file.resolve().parent)


MAX_SPEC_VALUES = 100_000


def _too_many_values(data: Any, limit: int = MAX_SPEC_VALUES) -> bool:
    """Whether ``data`` holds more than ``limit`` values, each alias counted again. A few lines of nested aliases
    (a "billion laughs") expand to billions of values, which printing a bad value or writing zoo.json would
    spell out: gigabytes and minutes to fail."""
    pending, seen = [data], 0
    while pending:
        seen += 1
        if seen > limit:
            return True
        value = pending.pop()
        if isinstance(value, dict):
            pending.extend([*value.keys(), *value.values()])
        elif isinstance(value, list):
            pending.extend(value)
    return False
