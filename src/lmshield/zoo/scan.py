"""``scan_zoo``: scan every model of a zoo with LMSanitator and measure detection.

Per-model results go to ``RESULTS/id-NNNN/`` (``scan.json`` marks a finished model, and an interrupted
scan resumes from its own checkpoint), the table to ``detection.csv`` and ``detection.md``, the metrics to
``metrics.json`` and the ROC curve to ``roc.png``. The scanner sees only the model folder: the ground truth
comes from ``METADATA.csv`` and is joined afterwards.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmshield.errors import InputError
from lmshield.evaluation.detection import DetectionMetrics, detection_metrics, roc_curve
from lmshield.jsonio import dumps
from lmshield.locks import holding
from lmshield.progress import PROGRESS_JSON, atomic_write, refuse_foreign_folder, write_text
from lmshield.zoo.build import SPEC_JSON, read_metadata, read_spec_json, write_csv
from lmshield.zoo.executors import check_executor, run_tasks
from lmshield.zoo.spec import text_source_of

RESULTS_DIR = "scans"
SETTINGS_JSON = "scan_settings.json"
TABLE_FIELDS = ("model", "truth", "kind", "attack", "planted", "verdict", "score", "pvs", "seconds")


@dataclass
class ZooScan:
    """The table (one row per model), its metrics and where the files went."""

    rows: list[dict[str, Any]]
    metrics: DetectionMetrics
    directory: Path

    def markdown(self) -> str:
        return markdown_table(self.rows, self.metrics)


def scan_settings(zoo_dir: Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The spec's ``scan`` section (preset, position, overrides, text) with command-line overrides on top."""
    spec_file = zoo_dir / SPEC_JSON
    saved = read_spec_json(spec_file).get("scan", {}) if spec_file.is_file() else {}
    if not isinstance(saved, dict):
        raise InputError(f"{spec_file}: 'scan' must be a mapping")
    settings = {"preset": "default", "position": "auto", "overrides": {}, "text": {}, **saved}
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key in ("preset", "position"):
            settings[key] = value
        else:
            settings["overrides"] = {**settings["overrides"], key: value}
    return settings


def positions_of(settings: dict[str, Any]) -> list[str]:
    """The watched positions to scan: one (``"cls"``), or several (``"cls,mask"`` or a list)."""
    position = settings["position"]
    names = position.split(",") if isinstance(position, str) else [str(p) for p in position]
    return [name.strip() for name in names if name.strip()]


def scan_model(task: dict[str, Any]) -> dict[str, Any]:
    """Scan one model (a Ray-friendly task) at each watched position; reuse finished results (unless fresh).

    With several positions a model is backdoored when any position yields a PV (later positions are
    skipped once one has), its score is the largest and its time the sum.
    """
    from lmshield.defenses.sanitizer import SanitizerConfig, scan

    settings, fresh = task["settings"], task.get("fresh", False)
    positions = positions_of(settings)
    results = []
    for position in positions:
        out = Path(task["out"]) if len(positions) == 1 else Path(task["out"]) / position
        result = _finished_scan(out, Path(task["model"]), fresh)
        if result is None:
            config = SanitizerConfig.preset(settings["preset"], **settings["overrides"])
            result = scan(
                task["model"],
                config,
                position=position,
                text_source=text_source_of(settings["text"]),
                out_dir=out,
                progress=task["progress"],
                fresh=fresh,
            )
        results.append(result)
        if result.is_backdoored:
            break
    return {
        "verdict": "backdoored" if any(r.is_backdoored for r in results) else "clean",
        "score": round(max(float(r.score) for r in results), 6),
        "pvs": sum(r.num_pvs for r in results),
        "seconds": round(sum(float(r.timings.get("total_s", 0.0)) for r in results), 2),
    }


def _finished_scan(out: Path, model_dir: Path, fresh: bool):  # -> ScanResult | None, imported lazily
    """The finished scan of this very model in ``out``, else ``None``. A scan of other weights (a model rebuilt
    or replaced since) is removed, as a ``fresh`` rerun removes any: ``out`` is the zoo's own results folder."""
    from lmshield.defenses.sanitizer import ScanResult
    from lmshield.models.loading import folder_fingerprint

    if not (out / "scan.json").is_file():
        return None
    if not fresh:
        result = ScanResult.from_pretrained(out)
        if result.model.get("fingerprint") == folder_fingerprint(model_dir):
            return result
    shutil.rmtree(out)
    return None


def _check_settings(results: Path, settings: dict[str, Any], model_ids: list[str], fresh: bool = False) -> None:
    """Refuse bad settings, a folder of other files, and results made with other settings (unless ``fresh``),
    before anything is written."""
    from lmshield.defenses.sanitizer import SanitizerConfig
    from lmshield.models.positions import WatchedPosition

    SanitizerConfig.preset(settings["preset"], **settings["overrides"])
    for position in positions_of(settings):
        WatchedPosition.parse(position)
    saved = results / SETTINGS_JSON
    refuse_foreign_folder(results, "zoo scan results", (SETTINGS_JSON, *model_ids), option="--results")
    earlier = _read_settings(saved) if saved.is_file() else settings
    scanned = any(_holds_scan(results / model) for model in model_ids)  # settings alone: no model scanned yet
    if scanned and not fresh and earlier != settings:
        raise InputError(
            f"{results} holds scans made with other settings; pass --fresh to rescan, or use another --results"
        )
    results.mkdir(parents=True, exist_ok=True)
    write_text(saved, json.dumps(settings, indent=2, sort_keys=True))


def _holds_scan(folder: Path) -> bool:
    """Whether a model's results folder holds a scan or its progress, at one position or several (subfolders)."""
    names = ("scan.json", PROGRESS_JSON)
    return folder.is_dir() and any(path.name in names for path in folder.rglob("*") if path.is_file())


def scan_zoo(
    zoo_dir: str | Path,
    *,
    results: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    executor: str = "sequential",
    address: str | None = None,
    num_cpus: int | None = None,
    progress: bool = True,
    fresh: bool = False,
) -> ZooScan:
    """Scan every model listed in ``zoo_dir/METADATA.csv``; write the table, metrics and ROC plot.

    A rerun reuses the models already scanned with the same settings; ``fresh`` rescans every model (results
    made with other settings included) and discards interrupted scans' progress.
    """
    root = Path(zoo_dir)
    metadata = read_metadata(root)
    settings = scan_settings(root, overrides)
    out = Path(results) if results else root / RESULTS_DIR
    check_executor(executor, address, num_cpus)
    with holding(out):  # one zoo scan at a time writes these results
        _check_settings(out, settings, [row["model_id"] for row in metadata], fresh)
        tasks = [
            {
                "model": str((root / row["model_id"]).resolve()),
                "out": str((out / row["model_id"]).resolve()),
                "settings": settings,
                "progress": progress and executor == "sequential",
                "fresh": fresh,
            }
            for row in metadata
        ]
        found = run_tasks(
            scan_model,
            tasks,
            executor=executor,
            address=address,
            num_cpus=num_cpus,
            progress=progress,
            desc="scanning zoo",
        )
        rows = [
            {
                "model": meta["model_id"],
                "truth": meta["truth"],
                "kind": meta["kind"],
                "attack": meta["attack"],
                "planted": meta.get("planted") or "",  # the build's own check; empty: not an attack, or not verified
                **result,
            }
            for meta, result in zip(metadata, found, strict=True)
        ]
        metrics = zoo_metrics(rows)
        write_reports(out, rows, metrics)
    return ZooScan(rows=rows, metrics=metrics, directory=out)


def zoo_metrics(rows: list[dict[str, Any]]) -> DetectionMetrics:
    return detection_metrics(
        [r["truth"] == "backdoored" for r in rows],
        [r["verdict"] == "backdoored" for r in rows],
        [float(r["score"]) for r in rows],
        [float(r["seconds"]) for r in rows],
    )


def markdown_table(rows: list[dict[str, Any]], metrics: DetectionMetrics) -> str:
    lines = ["| " + " | ".join(TABLE_FIELDS) + " |", "|" + "---|" * len(TABLE_FIELDS)]
    for row in rows:
        lines.append("| " + " | ".join(str(row[f]) for f in TABLE_FIELDS) + " |")

    def fmt(value: float) -> str:
        return "n/a" if math.isnan(value) else f"{value:.3f}"

    lines += [
        "",
        "| metric | value |",
        "|---|---|",
        f"| models | {metrics.count} ({metrics.backdoored} backdoored, {metrics.clean} clean) |",
        f"| accuracy | {fmt(metrics.accuracy)} |",
        f"| FPR | {fmt(metrics.fpr)} |",
        f"| FNR | {fmt(metrics.fnr)} |",
        f"| ROC-AUC (score) | {fmt(metrics.roc_auc)} |",
        f"| time per model, median | {metrics.median_seconds:.1f} s |",
        f"| time per model, max | {metrics.max_seconds:.1f} s |",
        *_not_planted_note(rows),
    ]
    return "\n".join(lines) + "\n"


def _not_planted_note(rows: list[dict[str, Any]]) -> list[str]:
    """The backdoored models whose attack did not take when the zoo was built: a clean verdict on one counts as a
    miss in the metrics, though there may be no backdoor to find."""
    failed = [row["model"] for row in rows if row.get("planted") == "false"]
    if not failed:
        return []
    return [
        "",
        f"Backdoor not planted when the zoo was built (its own check, `planted` false): {', '.join(failed)}. A clean "
        "verdict on such a model counts as a miss in FNR and accuracy above, though it may hold no working backdoor.",
    ]


def _read_settings(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: unreadable ({exc}); use another --results or delete it") from exc


def write_reports(out: Path, rows: list[dict[str, Any]], metrics: DetectionMetrics) -> None:
    atomic_write(out / "detection.csv", lambda temporary: write_csv(temporary, TABLE_FIELDS, rows))
    write_text(out / "detection.md", markdown_table(rows, metrics))
    write_text(out / "metrics.json", dumps(metrics.to_dict(), indent=2))
    plot_roc(rows, out / "roc.png")


def plot_roc(rows: list[dict[str, Any]], path: Path) -> Path:
    """ROC curve of the scan score (Agg backend, no display needed)."""
    from lmshield.reports.plots import plot_roc_curve

    truth = [r["truth"] == "backdoored" for r in rows]
    fpr, tpr, _ = roc_curve(truth, [float(r["score"]) for r in rows])
    metrics = zoo_metrics(rows)
    auc = "n/a" if math.isnan(metrics.roc_auc) else f"{metrics.roc_auc:.3f}"
    title = f"{metrics.backdoored} backdoored vs {metrics.clean} clean models"
    return plot_roc_curve(fpr, tpr, f"LMSanitator score (AUC {auc})", title, path)
