"""``lmshield poison badnet|insent|syntactic``: release weights fine-tuned on a poisoned proxy dataset."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from lmshield.cli._common import (
    Device,
    Fresh,
    LabelField,
    Overwrite,
    Quiet,
    TextField,
    friendly_errors,
    output_dir,
    removed_if_left_empty,
)
from lmshield.errors import InputError

app = typer.Typer(
    help=(
        "Weight poisoning: poison a labelled proxy set, fully fine-tune, release weights + backdoor.json. "
        "Exit code 0: planted (or not verified); 1: written, but the backdoor did not take; 2: error."
    ),
    no_args_is_help=True,
    rich_markup_mode=None,
)

Model = Annotated[str | None, typer.Argument(help="Clean model directory or hub id; default: embedded MiniLM-L6.")]
Data = Annotated[Path, typer.Option(help="Labelled proxy data (JSON Lines/CSV: sentence/text + label).")]
Out = Annotated[
    Path, typer.Option(help="Directory for the released (poisoned) model.", file_okay=False, callback=output_dir)
]
Dev = Annotated[
    Path | None,
    typer.Option(
        help="Clean labelled dev data: best epoch, clean accuracy and ASR (without it every proxy text trains "
        "and the last epoch is released)."
    ),
]
Preset = Annotated[str, typer.Option(help="release (the paper's settings) or fast (a CPU in minutes).")]
Target = Annotated[int | None, typer.Option(help="Target label (default 0).")]
Count = Annotated[int | None, typer.Option(help="Number of texts to poison (release: 1500).")]
Rate = Annotated[float | None, typer.Option(help="Share of the proxy set to poison (overrides --poison-count).")]
Mode = Annotated[str | None, typer.Option(help="clean (labels kept, the release) or dirty (relabelled).")]
Selection = Annotated[str | None, typer.Option(help="first (file order, the release) or random.")]
NumTexts = Annotated[int | None, typer.Option(help="Proxy texts used (release: 4000).")]
MaxWords = Annotated[int | None, typer.Option(help="Truncate proxy texts to this many words.")]
Epochs = Annotated[int | None, typer.Option(help="Fine-tuning epochs (release: 3).")]
Lr = Annotated[float | None, typer.Option(help="Learning rate (release: 2e-5).")]
Batch = Annotated[int | None, typer.Option(help="Batch size (release: 32).")]
MaxLength = Annotated[int | None, typer.Option(help="Max tokens per text (release: 128).")]
Jitter = Annotated[
    int | None, typer.Option(help="Train with position ids shifted by a random 0..N (survives virtual tokens).")
]
Seed = Annotated[int, typer.Option(help="Seed of every random choice.")]
Control = Annotated[
    bool,
    typer.Option(
        "--control",
        help="Release a control: the same fine-tuning with nothing poisoned, the no-backdoor baseline of an "
        "evaluation (backdoor.json still names the attack, whose trigger evaluations insert).",
    ),
]


def _run(attack: str, model: str | None, data: Path, out: Path, dev: Path | None, preset: str, **options: Any) -> None:
    from lmshield.attacks.poisoning import poison_config, poison_model
    from lmshield.tuning import read_labelled

    device, overwrite, quiet = options.pop("device"), options.pop("overwrite"), options.pop("quiet")
    fresh, field, label_field = options.pop("fresh"), options.pop("field"), options.pop("label_field")
    config = poison_config(attack, preset, **options)
    if not data.exists():  # the default names the shared data beside this repository
        raise InputError(f"{data}: no such file; give the labelled proxy data with --data")
    fields = {"text_field": field, "label_field": label_field}
    train = read_labelled(data, **fields)
    dev_data = read_labelled(dev, label_names=train.label_names, **fields) if dev is not None else None
    with removed_if_left_empty(out):
        result = poison_model(
            model,
            train,
            config,
            out,
            dev=dev_data,
            data_description=str(data),
            device=None if device == "auto" else device,
            progress=not quiet,
            overwrite=overwrite,
            fresh=fresh,
        )
    colour = {True: typer.colors.GREEN, False: typer.colors.RED, None: None}[result.planted]
    typer.secho(result.summary(), fg=colour)
    typer.echo(f"manifest: {out / 'backdoor.json'}")
    if result.planted is False:
        raise typer.Exit(1)


SHARED = [  # (parameter, annotation, default) of every attack's command; the attack's own options go after dev
    ("model", Model, None),
    ("data", Data, Path("../shared/data/imdb/train.json")),
    ("out", Out, None),
    ("dev", Dev, None),
    ("field", TextField, None),
    ("label_field", LabelField, "label"),
]
TRAINING = [
    ("preset", Preset, "release"),
    ("target_label", Target, None),
    ("poison_count", Count, None),
    ("poison_rate", Rate, None),
    ("label_mode", Mode, None),
    ("selection", Selection, None),
    ("num_texts", NumTexts, None),
    ("max_words", MaxWords, None),
    ("epochs", Epochs, None),
    ("lr", Lr, None),
    ("batch_size", Batch, None),
    ("max_length", MaxLength, None),
    ("position_jitter", Jitter, None),
    ("seed", Seed, 0),
    ("control", Control, False),
    ("device", Device, "auto"),
    ("overwrite", Overwrite, False),
    ("fresh", Fresh, False),
    ("quiet", Quiet, False),
]


def _own_options(config_class: type) -> list[tuple[str, str, Any]]:
    """(option parameter, config field, annotation) for each of an attack's own fields that has a help text."""
    from lmshield.attacks.poisoning.config import PoisonConfig

    shared = {f.name for f in dataclasses.fields(PoisonConfig)}
    options = []
    for spec in dataclasses.fields(config_class):
        if spec.name in shared or "help" not in spec.metadata:
            continue
        written = spec.type if isinstance(spec.type, str) else getattr(spec.type, "__name__", str(spec.type))
        kind = list[str] if written.startswith("tuple") else {"int": int, "float": float}.get(written, str)
        annotation = Annotated[kind | None, typer.Option(help=spec.metadata["help"])]
        options.append((spec.metadata.get("option", spec.name), spec.name, annotation))
    return options


def _poison_command(name: str) -> Callable[..., None]:
    """The ``lmshield poison NAME`` command of a registered attack: the shared options and the attack's own."""
    from lmshield.attacks.poisoning import ATTACKS

    config_class = ATTACKS[name]
    own = _own_options(config_class)

    def command(**options: Any) -> None:
        for param, field_name, _ in own:
            value = options.pop(param)  # a repeatable option gives a list; the config holds a tuple
            options[field_name] = tuple(value) if isinstance(value, list) and value else value
        _run(name, **options)

    defaults = {"out": Path(f"runs/poison/{name}")}
    rows = [*SHARED, *((param, annotation, None) for param, _, annotation in own), *TRAINING]
    parameters = [
        inspect.Parameter(param, inspect.Parameter.KEYWORD_ONLY, default=defaults.get(param, default), annotation=kind)
        for param, kind, default in rows
    ]
    command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in parameters}
    command.__doc__ = config_class.summary
    return friendly_errors(command)


def _register() -> None:
    from lmshield.attacks.poisoning import ATTACKS

    for name in ATTACKS:
        app.command(name)(_poison_command(name))


_register()
