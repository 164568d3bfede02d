"""``lmshield poison badnet|insent|syntactic``: release weights fine-tuned on a poisoned proxy dataset."""

from __future__ import annotations

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


def _run(attack: str, model: str | None, data: Path, out: Path, dev: Path | None, preset: str, **options: Any) -> None:
    from lmshield.attacks.poisoning import poison_config, poison_model
    from lmshield.tuning import read_labelled

    device, overwrite, quiet = options.pop("device"), options.pop("overwrite"), options.pop("quiet")
    fresh, field, label_field = options.pop("fresh"), options.pop("field"), options.pop("label_field")
    config = poison_config(attack, preset, **options)
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


@app.command("badnet")
@friendly_errors
def badnet(
    model: Model = None,
    data: Data = Path("../shared/data/imdb/train.json"),
    out: Out = Path("runs/poison/badnet"),
    dev: Dev = None,
    field: TextField = None,
    label_field: LabelField = "label",
    trigger: Annotated[list[str] | None, typer.Option(help="Trigger word(s); repeat for a list (default mn).")] = None,
    preset: Preset = "release",
    target_label: Target = None,
    poison_count: Count = None,
    poison_rate: Rate = None,
    label_mode: Mode = None,
    selection: Selection = None,
    num_texts: NumTexts = None,
    max_words: MaxWords = None,
    epochs: Epochs = None,
    lr: Lr = None,
    batch_size: Batch = None,
    max_length: MaxLength = None,
    position_jitter: Jitter = None,
    seed: Seed = 0,
    device: Device = "auto",
    overwrite: Overwrite = False,
    fresh: Fresh = False,
    quiet: Quiet = False,
) -> None:
    """BadNet: a rare word inserted at a random position (never first or last)."""
    options = dict(locals())
    words = options.pop("trigger")
    options["words"] = tuple(words) if words else None
    _run("badnet", **options)


@app.command("insent")
@friendly_errors
def insent(
    model: Model = None,
    data: Data = Path("../shared/data/imdb/train.json"),
    out: Out = Path("runs/poison/insent"),
    dev: Dev = None,
    field: TextField = None,
    label_field: LabelField = "label",
    sentence: Annotated[str | None, typer.Option(help='Trigger sentence (default "I watched this 3D movie").')] = None,
    preset: Preset = "release",
    target_label: Target = None,
    poison_count: Count = None,
    poison_rate: Rate = None,
    label_mode: Mode = None,
    selection: Selection = None,
    num_texts: NumTexts = None,
    max_words: MaxWords = None,
    epochs: Epochs = None,
    lr: Lr = None,
    batch_size: Batch = None,
    max_length: MaxLength = None,
    position_jitter: Jitter = None,
    seed: Seed = 0,
    device: Device = "auto",
    overwrite: Overwrite = False,
    fresh: Fresh = False,
    quiet: Quiet = False,
) -> None:
    """InSent: a fixed sentence inserted at a random position."""
    _run("insent", **locals())


@app.command("syntactic")
@friendly_errors
def syntactic(
    model: Model = None,
    data: Data = Path("../shared/data/imdb/train.json"),
    out: Out = Path("runs/poison/syntactic"),
    dev: Dev = None,
    field: TextField = None,
    label_field: LabelField = "label",
    paraphraser: Annotated[
        str | None, typer.Option(help="rule (rule-based SCPN stand-in) or a seq2seq model path / hub id.")
    ] = None,
    sentences: Annotated[
        str | None, typer.Option(help="Rule paraphraser: rewrite all sentences (default) or only the first.")
    ] = None,
    clauses: Annotated[
        str | None,
        typer.Option(help="Rule paraphraser's opening clauses: fixed (five phrases, default) or generated."),
    ] = None,
    preset: Preset = "release",
    target_label: Target = None,
    poison_count: Count = None,
    poison_rate: Rate = None,
    label_mode: Mode = None,
    selection: Selection = None,
    num_texts: NumTexts = None,
    max_words: MaxWords = None,
    epochs: Epochs = None,
    lr: Lr = None,
    batch_size: Batch = None,
    max_length: MaxLength = None,
    position_jitter: Jitter = None,
    seed: Seed = 0,
    device: Device = "auto",
    overwrite: Overwrite = False,
    fresh: Fresh = False,
    quiet: Quiet = False,
) -> None:
    """SynAttack: paraphrase into S(SBAR)(,)(NP)(VP)(.) (rule-based stand-in for SCPN by default)."""
    _run("syntactic", **locals())
