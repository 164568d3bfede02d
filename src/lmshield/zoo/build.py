"""``build_zoo``: turn a spec into model folders ``DIR/id-NNNN/`` and ``DIR/METADATA.csv`` (TrojAI-like).

Each folder holds a loadable model (safetensors + tokenizer) and ``backdoor.json`` (ground truth of an
attack) or ``clean.json`` (how a clean model was made). Either file is written last, so its presence
marks a finished model and a rerun skips it; a folder without one is rebuilt from scratch.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

from lmshield.attacks.manifest import BACKDOOR_JSON
from lmshield.errors import InputError, ModelLoadError, require_file
from lmshield.files import readable_as_umask
from lmshield.jsonio import write_json
from lmshield.locks import holds
from lmshield.models.loading import find_weights, load_config, load_encoder, resolve_model_dir
from lmshield.progress import atomic_write, refuse_foreign_folder, write_text
from lmshield.zoo.executors import check_executor, run_tasks
from lmshield.zoo.spec import KINDS, ModelEntry, ZooSpec, text_source_of

SPEC_JSON = "zoo.json"
METADATA_CSV = "METADATA.csv"
CLEAN_JSON = "clean.json"
METADATA_FIELDS = ("model_id", "truth", "kind", "attack", "triggers", "seed", "preset", "planted", "seconds")


MODEL_ID = re.compile(r"id-\d{4,}")


def model_id(index: int) -> str:
    return f"id-{index:04d}"


def is_built(directory: Path) -> bool:
    """A clean model's record, or an attacked model's manifest that holds the zoo's record (written last)."""
    if (directory / CLEAN_JSON).is_file():
        return True
    try:
        manifest = json.loads((directory / BACKDOOR_JSON).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    extra = manifest.get("extra") if isinstance(manifest, dict) else None
    return isinstance(extra, dict) and isinstance(extra.get("zoo"), dict)


def _weight_drift(before: dict, model: Any) -> float:
    """Relative L2 change of all weights: ||w - w0|| / ||w0||."""
    num = den = 0.0
    for name, tensor in model.state_dict().items():
        if name in before and tensor.is_floating_point():
            num += float((tensor.float() - before[name]).pow(2).sum())
            den += float(before[name].pow(2).sum())
    return (num / den) ** 0.5 if den else 0.0


def _build_original(task: dict[str, Any], out: Path) -> dict[str, Any]:
    encoder = load_encoder(task["base_model"])
    encoder.save_pretrained(out)
    return {}


def _build_clean_continue(task: dict[str, Any], entry: ModelEntry, out: Path) -> dict[str, Any]:
    from lmshield.attacks import attack_config, plant
    from lmshield.attacks.runner import load_for_attack, load_texts

    config = attack_config(entry.attack or "por", entry.preset, **entry.overrides)
    encoder, mlm = load_for_attack(task["base_model"], config.clean_objective == "mlm")
    texts = load_texts(config, None, text_source_of(task["text"]), entry.seed, encoder.tokenizer)
    plan = config.plan(encoder.model_type, has_mlm_head=mlm is not None)
    trained = mlm or encoder.model
    before = {k: v.detach().float().clone() for k, v in trained.state_dict().items() if v.is_floating_point()}
    empty = encoder.embedding_matrix.new_zeros(0, encoder.hidden_size)
    plant(encoder, texts, [], empty, plan, seed=entry.seed, progress=task["progress"], mlm=mlm)
    trained.save_pretrained(out, safe_serialization=True)
    encoder.tokenizer.save_pretrained(out)
    readable_as_umask(out)
    return {
        "settings": config.to_dict(),
        "variant": config.variant(mlm is not None),
        "steps": plan.steps(len(texts)),
        "weight_drift": _weight_drift(before, trained),
    }


def _build_finetune(task: dict[str, Any], entry: ModelEntry, out: Path) -> dict[str, Any]:
    from lmshield.tuning import read_labelled
    from lmshield.zoo.finetune import FinetuneConfig, finetune_encoder

    config = FinetuneConfig.preset(entry.preset, **entry.overrides)
    data = read_labelled(str(entry.data), text_field=entry.text_field, label_field=entry.label_field)
    encoder = load_encoder(task["base_model"])
    before = {k: v.detach().float().clone() for k, v in encoder.model.state_dict().items() if v.is_floating_point()}
    tuned, stats = finetune_encoder(encoder, data, config, seed=entry.seed, progress=task["progress"])
    tuned.save_pretrained(out)
    return {
        "settings": config.to_dict(),
        "labels": data.label_names,
        **stats,
        "weight_drift": _weight_drift(before, tuned.model),
    }


def _build_attack(task: dict[str, Any], entry: ModelEntry, out: Path) -> dict[str, Any]:
    from lmshield.attacks import attack_config, run_attack

    config = attack_config(str(entry.attack), entry.preset, **entry.overrides)
    result = run_attack(
        config,
        task["base_model"],
        out,
        preset=entry.preset,
        triggers=entry.triggers,
        text_source=text_source_of(task["text"]),
        seed=entry.seed,
        progress=task["progress"],
    )
    verification = result.verification
    assert verification is not None
    worst = min(c.triggered_agreement for c in verification.triggers)
    return {"planted": verification.planted, "lowest_agreement": worst}


def build_model(task: dict[str, Any]) -> dict[str, Any]:
    """Build one zoo model (a Ray-friendly task: plain dict in, METADATA row out); skip it when finished."""
    out = Path(task["directory"])
    entry = ModelEntry(**task["entry"])
    if is_built(out):
        return _row(task["id"], entry, json.loads(_marker(out).read_text(encoding="utf-8")))
    if out.exists():
        shutil.rmtree(out)  # an unfinished build: start it again
    out.mkdir(parents=True)
    started = time.perf_counter()
    if entry.kind == "original":
        info = _build_original(task, out)
    elif entry.kind == "clean-continue":
        info = _build_clean_continue(task, entry, out)
    elif entry.kind == "clean-finetune":
        info = _build_finetune(task, entry, out)
    else:
        info = _build_attack(task, entry, out)
    record = {"entry": entry.to_dict(), "base_model": task["base_model"], "seconds": time.perf_counter() - started}
    record.update(info)
    if entry.kind == "attack":
        manifest = json.loads((out / BACKDOOR_JSON).read_text(encoding="utf-8"))
        manifest["extra"] = {**manifest.get("extra", {}), "zoo": record}
        write_json(out / BACKDOOR_JSON, manifest)
        return _row(task["id"], entry, manifest)
    write_json(out / CLEAN_JSON, record)
    return _row(task["id"], entry, record)


def _marker(out: Path) -> Path:
    return out / BACKDOOR_JSON if (out / BACKDOOR_JSON).is_file() else out / CLEAN_JSON


def _row(identifier: str, entry: ModelEntry, record: dict[str, Any]) -> dict[str, Any]:
    zoo = record.get("extra", {}).get("zoo", record)
    planted = zoo.get("planted")
    return {
        "model_id": identifier,
        "truth": entry.truth,
        "kind": entry.kind,
        "attack": entry.attack or "",
        "triggers": entry.describe_triggers(),
        "seed": entry.seed,
        "preset": entry.preset,
        "planted": "" if planted is None else str(bool(planted)).lower(),
        "seconds": round(float(zoo.get("seconds", 0.0)), 2),
    }


def _check_same_spec(out: Path, spec: ZooSpec) -> None:
    """A zoo resumes only in its own folder: one whose finished models the spec still makes the same way (same
    base model and text, the same entry at each finished model's place), or a new or empty one (unfinished model
    folders are rebuilt from scratch, so a folder of other files must never be taken for a zoo). The entries of
    models not finished yet may change: a spec corrected after a failed build resumes."""
    saved = out / SPEC_JSON
    refuse_foreign_folder(out, f"zoo ({SPEC_JSON})", (SPEC_JSON,))
    if not saved.is_file():
        return
    built = sorted(int(folder.name[3:]) for folder in _model_folders(out) if is_built(folder))
    if not built:
        return
    old, new = read_spec_json(saved), spec.to_dict()
    changed = [key for key in ("base_model", "text") if old.get(key) != new.get(key)]  # name, scan: no model
    entries = [entry.get("entries") if isinstance(entry.get("entries"), list) else [] for entry in (old, new)]
    kept = [n for n in built if n < min(map(len, entries)) and entries[0][n] == entries[1][n]]
    if kept != built:
        changed.append(f"entries of finished {', '.join(model_id(n) for n in built if n not in kept)}")
    if changed:
        raise InputError(
            f"{out} holds a zoo built from another spec (other {', '.join(changed)}); use another --out or delete it"
        )


def _model_folders(out: Path) -> list[Path]:
    return [folder for folder in out.iterdir() if MODEL_ID.fullmatch(folder.name) and folder.is_dir()]


def check_inputs(spec: ZooSpec) -> None:
    """Refuse, before anything is written, what no model could be built from: a base model that is not there or
    cannot be loaded (a hub id is fetched as the build would), a carrier-text or fine-tuning file that is missing."""
    try:
        directory = resolve_model_dir(spec.base_model)
        load_config(directory)
        find_weights(directory)
    except ModelLoadError as exc:
        raise InputError(f"zoo spec: base_model: {exc}") from None
    texts = spec.text.get("texts")
    files = [("text.texts", texts)] if texts is not None else []
    files += [("data", data) for data in dict.fromkeys(e.data for e in spec.entries if e.data is not None)]
    for key, file in files:
        try:
            require_file(file)  # a folder or a pipe is named as such, not as missing
        except InputError as exc:
            raise InputError(f"zoo spec: {key}: {exc}") from None


def read_spec_json(path: Path) -> dict[str, Any]:
    """A zoo's saved spec (``zoo.json``), with a one-line error when it is damaged."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: unreadable ({exc})") from exc
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object")
    return data


def write_metadata(out: Path, rows: list[dict[str, Any]]) -> Path:
    """Write ``out/METADATA.csv`` whole: a full disk keeps the old list, never a list cut short that a zoo scan
    would take for the whole zoo."""
    path = out / METADATA_CSV
    atomic_write(path, lambda temporary: write_csv(temporary, METADATA_FIELDS, rows))
    return path


def write_csv(path: Path, fields: tuple[str, ...] | list[str], rows: list[dict[str, Any]]) -> None:
    """Write ``rows`` to ``path`` as CSV with a header of ``fields``."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


TRUTHS = ("backdoored", "clean")


def read_metadata(out: str | Path) -> list[dict[str, str]]:
    path = Path(out) / METADATA_CSV
    if not path.is_file():
        raise InputError(f"{out}: no {METADATA_CSV}; build the zoo first (lmshield zoo build)")
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: unreadable ({exc})") from exc
    missing = [name for name in ("model_id", "truth", "kind", "attack") if rows and name not in rows[0]]
    if not rows or missing:
        raise InputError(f"{path}: no models listed" if not rows else f"{path}: no column {missing[0]!r}")
    bad = [row["model_id"] for row in rows if not MODEL_ID.fullmatch(str(row["model_id"]))]
    if bad:  # a model_id is joined to the zoo's folders: only id-NNNN keeps reads and writes inside them
        raise InputError(f"{path}: model_id {bad[0]!r} is not of the form id-NNNN")
    unknown = [row["truth"] for row in rows if row["truth"] not in TRUTHS]
    if unknown:  # the ground truth of every detection metric
        raise InputError(f"{path}: truth {unknown[0]!r} is neither {' nor '.join(TRUTHS)}")
    _check_copied_columns(path, rows)
    return rows


def _check_copied_columns(path: Path, rows: list[dict[str, str]]) -> None:
    """Refuse a kind, attack or planted that lmshield does not write: zoo scan copies them into detection.csv and
    detection.md, where a cell such as ``=HYPERLINK(...)`` runs as a spreadsheet formula, and a ``|`` or a line
    break rewrites the table."""
    from lmshield.attacks.configs import ATTACKS

    allowed = {"kind": KINDS, "attack": ("", *ATTACKS), "planted": ("", "true", "false")}
    for column, values in allowed.items():
        bad = next((row[column] for row in rows if row.get(column) not in (*values, None)), None)
        if bad is not None:
            raise InputError(f"{path}: {column} {bad!r} is not one of {', '.join(repr(v) for v in values)}")


@holds("out")
def build_zoo(
    spec: ZooSpec,
    out: str | Path,
    *,
    executor: str = "sequential",
    address: str | None = None,
    num_cpus: int | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Build every model of ``spec`` under ``out`` (finished ones are skipped) and write METADATA.csv."""
    check_executor(executor, address, num_cpus)  # before anything is written
    root = Path(out)
    _check_same_spec(root, spec)
    check_inputs(spec)
    write_text(root / SPEC_JSON, spec.to_json())
    tasks = [
        {
            "id": model_id(index),
            "directory": str((root / model_id(index)).resolve()),
            "entry": entry.to_dict(),
            "base_model": spec.base_model,
            "text": spec.text,
            "progress": progress and executor == "sequential",
        }
        for index, entry in enumerate(spec.entries)
    ]
    rows = run_tasks(
        build_model,
        tasks,
        executor=executor,
        address=address,
        num_cpus=num_cpus,
        progress=progress,
        desc="building zoo",
    )
    write_metadata(root, rows)
    return rows
