"""``lmshield tune``: tune a text classifier on an encoder with a PEFT method (or fully)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from lmshield.cli._common import (
    AllowPickle,
    Device,
    Fresh,
    LabelField,
    Overwrite,
    Quiet,
    TextField,
    friendly_errors,
    output_dir,
    refuse_to_replace,
)


@friendly_errors
def tune_command(
    train: Annotated[Path, typer.Option(help="Training data: JSON Lines, JSON, CSV/TSV, or a dataset id.")],
    out: Annotated[
        Path, typer.Option(help="Directory for the tuned classifier.", file_okay=False, callback=output_dir)
    ],
    model: Annotated[
        str | None, typer.Option(help="Encoder directory or hub id; default: embedded all-MiniLM-L6-v2.")
    ] = None,
    method: Annotated[str, typer.Option(help="prefix, prompt, ptuning, lora or full.")] = "prefix",
    dev: Annotated[Path | None, typer.Option(help="Dev data (best checkpoint); default: hold out 10%.")] = None,
    head: Annotated[str, typer.Option(help="cls: classify [CLS]; mask: template + mask token.")] = "cls",
    epochs: Annotated[int | None, typer.Option(help="Epochs (default 20, the PSIM release).")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate (default 2e-3 PEFT, 2e-5 full).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size (default 32).")] = None,
    max_length: Annotated[int | None, typer.Option(help="Max tokens per input (default 128).")] = None,
    num_virtual_tokens: Annotated[int | None, typer.Option(help="Virtual tokens (default 5).")] = None,
    prompt_init: Annotated[
        str, typer.Option(help="Prompt tuning's start: vocab (random word embeddings) or random (N(0, 1)).")
    ] = "vocab",
    text_field: TextField = None,
    label_field: LabelField = "label",
    split: Annotated[str, typer.Option(help="Split, when --train is a dataset id.")] = "train",
    limit: Annotated[int | None, typer.Option(help="Use only the first N training examples.", min=1)] = None,
    keep_head: Annotated[bool, typer.Option(help="Keep the checkpoint's sequence-classification head.")] = False,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    fresh: Fresh = False,
    overwrite: Overwrite = False,
    allow_pickle: AllowPickle = False,
    device: Device = "auto",
    quiet: Quiet = False,
) -> None:
    """Tune a classifier (prompt tuning, P-tuning, prefix tuning, LoRA or full fine-tuning)."""
    from lmshield.devices import resolve_device
    from lmshield.locks import holding
    from lmshield.progress import CHECKPOINT_DIR, PROGRESS_JSON
    from lmshield.tuning import TuningConfig, read_labelled, tune
    from lmshield.tuning.classifier import TUNING_JSON

    with holding(out):  # from the check for a finished classifier on: a second run must not slip in between
        refuse_to_replace(
            out, TUNING_JSON, "tuned classifier", overwrite, resumable=(f"{CHECKPOINT_DIR}/{PROGRESS_JSON}",)
        )
        overrides = {
            "epochs": epochs,
            "lr": lr,
            "batch_size": batch_size,
            "max_length": max_length,
            "num_virtual_tokens": num_virtual_tokens,
        }
        config = TuningConfig(
            method=method,
            head=head,
            keep_head=keep_head,
            prompt_init=prompt_init,
            seed=seed,
            **{k: v for k, v in overrides.items() if v is not None},
        )
        train_data = read_labelled(str(train), text_field=text_field, label_field=label_field, split=split).head(limit)
        dev_data = None
        if dev is not None:
            dev_data = read_labelled(
                str(dev), text_field=text_field, label_field=label_field, label_names=train_data.label_names
            )
        if not quiet:
            logging.getLogger("lmshield.tuning").setLevel(logging.INFO)
        held_out = "" if dev_data is not None else f" ({config.dev_fraction:.0%} of them held out for dev)"
        typer.echo(
            f"tuning {method} ({head} head) on {len(train_data)} examples{held_out}, {train_data.num_labels} labels"
        )
        result = tune(
            model,
            train_data,
            dev_data,
            config,
            out_dir=out,
            fresh=fresh,
            device=resolve_device(device),
            allow_pickle=allow_pickle,
            progress=not quiet,
        )
        typer.secho(
            f"dev accuracy {result.dev_accuracy:.4f} (best epoch {result.best_epoch}/{config.epochs}); saved to {out}",
            fg=typer.colors.GREEN,
            bold=True,
        )
