"""``lmshield psim``: fit PSIM on a released model, score/flag inputs, calibrate, and evaluate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from lmshield.cli._common import (
    Device,
    Fresh,
    Overwrite,
    Quiet,
    TextField,
    friendly_errors,
    output_dir,
    output_file,
    refuse_clobbering,
    refuse_foreign,
    refuse_to_replace,
    starts_over,
)
from lmshield.errors import InputError
from lmshield.jsonio import dumps
from lmshield.locks import holding
from lmshield.progress import write_output, write_text

app = typer.Typer(
    help="PSIM: flag poisoned inputs with a PEFT module trained on random labels.",
    no_args_is_help=True,
    rich_markup_mode=None,
)


def _device(device: str) -> str | None:
    return None if device == "auto" else device


MovedModel = Annotated[
    Path | None,
    typer.Option(help="Where the released model PSIM was fitted on now lives, if it moved (weights are checked)."),
]


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


Span = Annotated[
    str,
    typer.Option(
        help="clauses: the highest score of the input's and each clause's; text (the release): the whole input's."
    ),
]


def _texts(path: Path, field: str | None, limit: int | None = None) -> list[str]:
    from lmshield.text import read_texts

    return read_texts(path, field)[:limit]


@app.command("fit")
@starts_over
def fit(
    model: Annotated[str, typer.Argument(help="Released (possibly poisoned) model directory or hub id.")],
    texts: Annotated[Path, typer.Option(help="Downstream training texts (labels are not used).")],
    out: Annotated[
        Path, typer.Option(help="Directory for the fitted PSIM.", file_okay=False, callback=output_dir)
    ] = Path("runs/psim"),
    num_labels: Annotated[
        int | None,
        typer.Option(help="Number of classes of the downstream task (default: the released head's, else 2)."),
    ] = None,
    method: Annotated[
        str, typer.Option(help="PEFT method: ptuning (release), prompt, prefix, lora, full.")
    ] = "ptuning",
    epochs: Annotated[int, typer.Option(help="Epochs (release: 1).")] = 1,
    lr: Annotated[
        float | None, typer.Option(help="Learning rate (default: the release's 2e-5 scaled to the data size).")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 32,
    max_length: Annotated[int, typer.Option(help="Max tokens per text.")] = 128,
    threshold: Annotated[
        float | None, typer.Option(help="Fixed threshold (default: the release's 0.7, carried to the class count).")
    ] = None,
    score: Annotated[str, typer.Option(help="probability or normalised ((p-1/K)/(1-1/K)).")] = "probability",
    span: Span = "clauses",
    calibrate: Annotated[Path | None, typer.Option(help="Held-out clean texts to calibrate the threshold.")] = None,
    target_frr: Annotated[
        float | None, typer.Option(help="Target false-rejection rate for --calibrate (default 0.05).")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Use at most this many training texts.", min=1)] = None,
    field: TextField = None,
    seed: Annotated[int, typer.Option(help="Seed of the random labels and the module.")] = 0,
    overwrite: Overwrite = False,
    device: Device = "auto",
    quiet: Quiet = False,
) -> None:
    """Train PSIM on the downstream texts with random labels and save it."""
    from lmshield.defenses.psim import PSIM
    from lmshield.defenses.psim.detector import PSIM_JSON
    from lmshield.defenses.psim.thresholds import check_target_frr

    with holding(out):
        refuse_to_replace(out, PSIM_JSON, "fitted PSIM", overwrite)
        if target_frr is not None and calibrate is None:
            raise InputError("--target-frr goes with --calibrate (the held-out texts it is met on)")
        target_frr = 0.05 if target_frr is None else target_frr
        check_target_frr(target_frr)
        if calibrate is not None and threshold is not None:
            raise InputError("give --threshold or --calibrate, not both: calibration sets the threshold")
        held_out = None if calibrate is None else _texts(calibrate, field)  # a bad file fails before training
        train_texts = _texts(texts, field, limit)

        psim = PSIM(
            method,
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            max_length=max_length,
            threshold=threshold,
            score_kind=score,
            span=span,
            seed=seed,
            device=_device(device),
            progress=not quiet,
        )
        psim.fit(model, train_texts, num_labels)
        if held_out is not None:
            psim.calibrate(held_out, target_frr)
        psim.save_pretrained(out)
        typer.echo(
            f"PSIM fitted on {psim.n_train_} texts ({psim.num_labels_} labels, lr {psim.lr_:.2g}), "
            f"threshold {psim.threshold_:.4f}"
        )
        typer.echo(f"saved: {out}")


@app.command("calibrate")
@starts_over
def calibrate_command(
    psim_dir: Annotated[Path, typer.Argument(help="A saved PSIM directory.")],
    texts: Annotated[Path, typer.Option(help="Held-out clean task texts.")],
    target_frr: Annotated[float, typer.Option(help="Target false-rejection rate.")] = 0.05,
    field: TextField = None,
    model: MovedModel = None,
    device: Device = "auto",
    quiet: Quiet = False,
) -> None:
    """Set the threshold to a target false-rejection rate on held-out clean texts (saved in place)."""
    from lmshield.defenses.psim import PSIM

    with holding(psim_dir):  # saved in place
        psim = PSIM.from_pretrained(psim_dir, device=_device(device), progress=not quiet, model=model)
        psim.calibrate(_texts(texts, field), target_frr)
        psim.save_pretrained(psim_dir)
    cal = psim.calibration_
    typer.echo(f"threshold {psim.threshold_:.4f}: FRR {cal.achieved_frr:.3f} on {cal.num_texts} texts")


@app.command("score")
@starts_over
def score_command(
    psim_dir: Annotated[Path, typer.Argument(help="A saved PSIM directory.")],
    texts: Annotated[Path, typer.Option(help="Texts to check (text file or JSON Lines).")],
    out: Annotated[
        Path | None, typer.Option(help="Write one JSON line per text here.", dir_okay=False, callback=output_file)
    ] = None,
    field: TextField = None,
    model: MovedModel = None,
    device: Device = "auto",
    quiet: Quiet = False,
) -> None:
    """Score and flag texts; flagged texts would be refused."""
    from lmshield.defenses.psim import PSIM

    refuse_clobbering({"--out": out}, (psim_dir, texts, model))
    psim = PSIM.from_pretrained(psim_dir, device=_device(device), progress=not quiet, model=model)
    items = _texts(texts, field)
    result = psim.scores(items)
    scores = result.select(psim.score_kind)
    flags = psim.flags(scores)
    rows = zip(items, scores, result.probability, result.normalised, flags, result.view, strict=True)
    lines = [
        json.dumps(
            {"text": t, "score": float(s), "p_max": float(p), "normalised": float(n), "flagged": bool(f)}
            | ({"clause": v} if v != t else {})  # the clause the score was read on, when not the whole text
        )
        for t, s, p, n, f, v in rows
    ]
    if out is not None:
        write_output(out, "\n".join(lines) + "\n")
    else:
        typer.echo("\n".join(lines))
    typer.echo(f"{int(flags.sum())} of {len(items)} flagged as poisoned (threshold {psim.threshold_:.4f})", err=True)


@app.command("eval")
@friendly_errors
def eval_command(
    models: Annotated[list[Path], typer.Argument(help="Released model directories (each with backdoor.json).")],
    task: Annotated[list[Path], typer.Option(help="Task folder(s) with train/dev/test.json; repeatable.")],
    out: Annotated[Path, typer.Option(help="Result directory.", file_okay=False, callback=output_dir)] = Path(
        "runs/psim-eval"
    ),
    strategies: Annotated[
        str | None,
        typer.Option(
            help="Victim strategies, comma-separated (default: the preset's; full,lora,prompt,ptuning,prefix)."
        ),
    ] = None,
    preset: Annotated[
        str, typer.Option(help="release (the paper's scale), fast (a CPU in minutes) or smoke (a quick check).")
    ] = "release",
    target_frr: Annotated[
        float | None,
        typer.Option(
            help="Calibrate PSIM to this FRR on dev texts (default: the release's 0.7, carried to K classes)."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    span: Span = "clauses",
    baselines: Annotated[
        str | None,
        typer.Option(
            help="Baselines on the same victims: strip, onion, paraphrase-back, paraphrase-scpn (comma-separated)."
        ),
    ] = None,
    baseline_on: Annotated[
        str | None, typer.Option(help="Victim strategies the baselines run on (default: all evaluated).")
    ] = None,
    onion_lm: Annotated[Path | None, typer.Option(help="Causal language model directory for ONION.")] = None,
    onion_max_drop: Annotated[
        float | None,
        typer.Option(help="Calibrate ONION's threshold to this clean-accuracy drop on dev (default: threshold 0)."),
    ] = None,
    gate: Annotated[
        Path | None,
        typer.Option(
            help="A fitted PSIM (e.g. an earlier psim eval's MODEL-TASK/psim) that gates the victims instead of one "
            "fitted per model: on a control release (poison --control), what PSIM lets through with no backdoor.",
            file_okay=False,
        ),
    ] = None,
    fresh: Fresh = False,
    device: Device = "auto",
    quiet: Quiet = False,
) -> None:
    """Attack x strategy x dataset: clean accuracy, ASR and flip ASR without and with PSIM (and baselines)."""
    import dataclasses

    from lmshield.evaluation.baselines_eval import BaselineSettings
    from lmshield.evaluation.psim_eval import EvalSettings, evaluate_release, gate_identity, markdown_table

    if gate is not None:
        gate_identity(gate)  # before the output folder is taken
    base = EvalSettings.preset(preset)
    names = _names(strategies) if strategies else base.strategies
    psim = {**base.psim, "span": span}
    settings = dataclasses.replace(base, strategies=names, target_frr=target_frr, seed=seed, psim=psim)
    extra = None
    if baseline_on and not baselines:
        raise InputError("--baseline-on goes with --baselines")
    if baselines:
        on = _names(baseline_on) if baseline_on else None
        stray = sorted(set(on or ()) - set(names))
        if stray:
            raise InputError(f"--baseline-on {', '.join(stray)}: not among the evaluated --strategies")
        lm = str(onion_lm) if onion_lm else None
        extra = BaselineSettings(_names(baselines), on, lm, onion_max_drop=onion_max_drop)
    if onion_max_drop is not None and "onion" not in (extra.names if extra else ()):
        raise InputError("--onion-max-drop goes with the onion baseline (--baselines onion)")
    runs = [(model, folder, f"{model.name}-{folder.name}") for model in models for folder in task]
    names = [name for *_, name in runs]
    clash = next((name for name in names if names.count(name) > 1), None)
    if clash is not None:
        raise InputError(f"two evaluations would share the folder {out / clash}: give models and tasks distinct names")
    with holding(out):
        refuse_foreign(out, "rows.json", "PSIM evaluation", ("rows.json", *names))  # a run's folder: resumable
        rows = []
        for model, folder, name in runs:
            result = evaluate_release(
                model,
                folder,
                settings,
                out_dir=out / name,
                device=_device(device),
                progress=not quiet,
                fresh=fresh,
                baselines=extra,
                psim=gate,
            )
            for row in result.all_rows:  # which release a row belongs to, for a table of several
                row.extra["release"] = model.name
            rows.extend(result.all_rows)
        table = markdown_table(rows)
        write_text(out / "table.md", table)
        write_text(out / "rows.json", dumps([r.to_dict() for r in rows], indent=2))
        typer.echo(table)
        typer.echo(f"results: {out}")
