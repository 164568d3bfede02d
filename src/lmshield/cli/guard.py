"""``lmshield predict`` and ``lmshield guard eval``: a tuned classifier guarded by a scan's PVs (or by PSIM)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from lmshield.cli._common import (
    AllowPickle,
    AnyScan,
    Base,
    Device,
    LabelField,
    Quiet,
    TextField,
    output_file,
    refuse_clobbering,
    starts_over,
)
from lmshield.errors import InputError
from lmshield.progress import write_output

if TYPE_CHECKING:
    from lmshield.defenses.sanitizer.guard import Guard

CalibrationTexts = Annotated[
    Path | None,
    typer.Option(
        help="Held-out clean task texts (1,000 or more): raise the thresholds of PVs they come close to; "
        "or a calibration saved with --save-calibration (.safetensors)."
    ),
]
CALIBRATION_SUFFIX = ".safetensors"  # a saved calibration; any other --calibrate file holds texts
PROGRESS_FROM = 256  # texts; fewer are classified before a bar would be read
BATCH_SIZE = 64

SaveCalibration = Annotated[
    Path | None,
    typer.Option(
        help="Write the calibrated thresholds here (.safetensors), to reuse with --calibrate.",
        dir_okay=False,
        callback=output_file,
    ),
]


def _load_guard(
    classifier: Path, scan: Path, *, calibrate: Path | None, field: str | None, save: Path | None, **options: Any
) -> Guard:
    """A guard over a saved classifier and scan (``options`` go to ``Guard.from_pretrained``), calibrated from
    clean texts or a saved calibration, which is then saved where asked."""
    from lmshield.defenses.sanitizer.guard import Guard
    from lmshield.text import read_texts

    if save is not None and calibrate is None:
        raise InputError("--save-calibration needs --calibrate")
    if save is not None and save.suffix.lower() != CALIBRATION_SUFFIX:  # --calibrate tells the two apart by it
        raise InputError(f"--save-calibration {save}: name it *{CALIBRATION_SUFFIX}, so --calibrate reads it back")
    guard = Guard.from_pretrained(classifier, scan, **options)
    if calibrate is not None and calibrate.suffix.lower() == CALIBRATION_SUFFIX:
        guard.load_calibration(calibrate)
    elif calibrate is not None:
        guard.calibrate(read_texts(calibrate, field))
    if save is not None:
        typer.echo(f"calibration: {guard.save_calibration(save)}", err=True)
    return guard


guard_app = typer.Typer(
    help="Guard a tuned classifier with a scan's PVs (monitoring and purging).",
    no_args_is_help=True,
    rich_markup_mode=None,
)


def _write_jsonl(rows: list[dict], out: Path | None) -> None:
    lines = "\n".join(json.dumps(row, ensure_ascii=False) for row in rows) + "\n"
    if out is None:
        typer.echo(lines, nl=False)
        return
    write_output(out, lines)


@starts_over
def predict_command(
    classifier: Annotated[Path, typer.Argument(help="Tuned classifier directory (lmshield tune --out).")],
    texts: Annotated[Path, typer.Argument(help="Texts: a text file (one a line) or JSON Lines.")],
    scan: Annotated[Path | None, typer.Option(help="Scan result directory: guard predictions with its PVs.")] = None,
    psim: Annotated[
        Path | None, typer.Option(help="Saved PSIM directory: refuse the inputs it flags as poisoned.")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="JSON Lines output; default: stdout.", dir_okay=False, callback=output_file)
    ] = None,
    field: TextField = None,
    threshold: Annotated[
        float | None, typer.Option(help="With --scan: flag above this share of matching signs (default 0.8).")
    ] = None,
    calibrate: CalibrationTexts = None,
    save_calibration: SaveCalibration = None,
    purge: Annotated[
        bool | None, typer.Option(help="With --scan: purge flagged inputs, else refuse them (default: purge).")
    ] = None,
    max_removed: Annotated[
        int | None, typer.Option(help="With --scan: most words the purge may delete (default 3).")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help=f"Texts per forward pass (default {BATCH_SIZE}; not with --psim).", min=1)
    ] = None,
    base: Base = None,
    any_scan: AnyScan = False,
    allow_pickle: AllowPickle = False,
    psim_model: Annotated[
        Path | None,
        typer.Option(help="With --psim: where the released model PSIM was fitted on now lives, if it moved."),
    ] = None,
    any_psim: Annotated[
        bool, typer.Option(help="With --psim: accept a PSIM fitted on other weights than the classifier's base.")
    ] = False,
    device: Device = "auto",
    quiet: Quiet = False,
) -> None:
    """Classify a file of texts, guarded by a scan (--scan) or PSIM (--psim); one JSON object per text."""
    from lmshield.devices import resolve_device
    from lmshield.text import read_texts
    from lmshield.tuning import TunedClassifier

    if scan is not None and psim is not None:
        raise InputError("give --scan or --psim, not both")
    guard_options = {"threshold": threshold, "purge": purge, "max_removed": max_removed}
    guard_options = {k: v for k, v in guard_options.items() if v is not None}
    if scan is None and (guard_options or any_scan or calibrate is not None or save_calibration is not None):
        raise InputError(
            "--threshold, --purge, --max-removed, --any-scan, --calibrate and --save-calibration go with --scan"
        )
    if psim is None and (psim_model is not None or any_psim):
        raise InputError("--psim-model and --any-psim go with --psim")
    if psim is not None and batch_size is not None:
        raise InputError("--batch-size does not go with --psim (PSIM and the victim use their own)")
    batch_size = batch_size or BATCH_SIZE
    refuse_clobbering(
        {"--out": out, "--save-calibration": save_calibration},
        (texts, classifier, scan, psim, calibrate, base, psim_model),
    )
    items = read_texts(texts, field)
    progress = not quiet and len(items) > PROGRESS_FROM
    if psim is not None:
        rows = _psim_rows(
            classifier,
            psim,
            items,
            resolve_device(device),
            base=base,
            psim_model=psim_model,
            progress=progress,
            allow_pickle=allow_pickle,
            any_psim=any_psim,
        )
    elif scan is None:
        model = TunedClassifier.from_pretrained(
            classifier, device=resolve_device(device), base=base, allow_pickle=allow_pickle
        )
        output = model.classify(items, batch_size, progress=progress)
        rows = [  # "final_label", as in the guarded modes: one reader serves all three
            {
                "text": t,
                "label": int(y),
                "final_label": int(y),
                "label_name": model.label_names[int(y)],
                "probs": p.tolist(),
            }
            for t, y, p in zip(items, output.labels, output.probs, strict=True)
        ]
    else:
        guard = _load_guard(
            classifier,
            scan,
            calibrate=calibrate,
            field=field,
            save=save_calibration,
            device=resolve_device(device),
            base=base,
            any_scan=any_scan,
            allow_pickle=allow_pickle,
            batch_size=batch_size,
            progress=progress,
            **guard_options,
        )
        rows = [p.to_dict() for p in guard.predict(items)]
        flagged = sum(r["flagged"] for r in rows)
        refused = sum(r["status"] == "refused" for r in rows)
        typer.secho(f"{len(rows)} texts: {flagged} flagged, {refused} refused", err=True)
    _write_jsonl(rows, out)


def _psim_rows(
    classifier: Path,
    psim_dir: Path,
    items: list[str],
    device: str | None,
    *,
    base: Path | None,
    psim_model: Path | None,
    progress: bool,
    allow_pickle: bool,
    any_psim: bool,
) -> list[dict]:
    """The victim's answers behind PSIM: refused inputs get no label. ``base`` / ``psim_model``: where the
    victim's base and PSIM's released model now live, if they moved."""
    from lmshield.defenses.psim import PSIM, ShieldedClassifier
    from lmshield.tuning import TunedClassifier

    victim = TunedClassifier.from_pretrained(classifier, device=device, base=base, allow_pickle=allow_pickle)
    psim = PSIM.from_pretrained(psim_dir, device=device, progress=progress, model=psim_model)
    if psim.num_labels_ != len(victim.label_names):
        raise InputError(f"the PSIM knows {psim.num_labels_} labels, the classifier {len(victim.label_names)}")
    if psim.classifier_.base.fingerprint != victim.base.fingerprint and not any_psim:
        raise InputError(
            f"the PSIM was fitted on other weights ({psim.model_}) than the classifier was tuned from "
            f"({victim.base.source}); it watches another model's backdoor. Pass --any-psim if that is intended"
        )
    report = ShieldedClassifier(psim, victim).predict(items)
    typer.secho(report.summary(), err=True)
    return [
        {
            "text": text,
            "status": "refused" if label is None else "clean",
            "final_label": label,
            "label_name": None if label is None else victim.label_names[label],
            "flagged": label is None,
            "psim_score": score,
        }
        | ({"psim_clause": view} if view != text else {})  # the clause the score was read on
        for text, label, score, view in zip(items, report.labels, report.scores, report.views, strict=True)
    ]


def _triggers(backdoor: Path | None, triggers: str | None) -> list[str]:
    from lmshield.evaluation.guard_eval import read_triggers

    if (backdoor is None) == (triggers is None):
        raise InputError("give the triggers either with --backdoor backdoor.json or with --triggers 'cf,mn'")
    if backdoor is not None:
        return read_triggers(backdoor)
    listed = [t.strip() for t in (triggers or "").split(",") if t.strip()]
    if not listed:
        raise InputError("--triggers is empty")
    return listed


@guard_app.command("eval")
@starts_over
def eval_command(
    classifier: Annotated[Path, typer.Option(help="Tuned classifier directory.")],
    scan: Annotated[Path, typer.Option(help="Scan result directory (scan.json + pvs.safetensors).")],
    test: Annotated[Path, typer.Option(help="Labelled test data (JSON Lines, JSON, CSV) or dataset id.")],
    backdoor: Annotated[Path | None, typer.Option(help="An attack's backdoor.json (field 'triggers').")] = None,
    triggers: Annotated[str | None, typer.Option(help="Comma-separated triggers instead of --backdoor.")] = None,
    text_field: TextField = None,
    label_field: LabelField = "label",
    limit: Annotated[int | None, typer.Option(help="Use only the first N test examples.", min=1)] = None,
    threshold: Annotated[float, typer.Option(help="Monitor threshold (the paper's 0.8).")] = 0.8,
    calibrate: CalibrationTexts = None,
    save_calibration: SaveCalibration = None,
    max_removed: Annotated[int, typer.Option(help="Most words the purge may delete.")] = 3,
    batch_size: Annotated[int, typer.Option(help="Texts per forward pass.", min=1)] = 64,
    seed: Annotated[int, typer.Option(help="Seed of the trigger positions.")] = 0,
    out: Annotated[
        Path | None, typer.Option(help="Write the report as JSON here.", dir_okay=False, callback=output_file)
    ] = None,
    base: Base = None,
    any_scan: AnyScan = False,
    allow_pickle: AllowPickle = False,
    device: Device = "auto",
    quiet: Quiet = False,
) -> None:
    """ASR with and without the guard, clean accuracy, monitor FPR, purge success and latency."""
    from lmshield.devices import resolve_device
    from lmshield.evaluation.guard_eval import evaluate_guard
    from lmshield.tuning import read_labelled

    refuse_clobbering(
        {"--out": out, "--save-calibration": save_calibration}, (classifier, scan, test, backdoor, calibrate, base)
    )
    trigger_list = _triggers(backdoor, triggers)
    guard = _load_guard(
        classifier,
        scan,
        calibrate=calibrate,
        field=text_field,
        save=save_calibration,
        device=resolve_device(device),
        base=base,
        any_scan=any_scan,
        allow_pickle=allow_pickle,
        threshold=threshold,
        max_removed=max_removed,
        batch_size=batch_size,
        progress=not quiet,
    )
    data = read_labelled(
        str(test), text_field=text_field, label_field=label_field, label_names=guard.classifier.label_names
    ).head(limit)
    report = evaluate_guard(guard, data.texts, data.labels, trigger_list, seed=seed)
    typer.echo(report.table())
    if out is not None:
        typer.echo(f"report: {report.save(out)}")
