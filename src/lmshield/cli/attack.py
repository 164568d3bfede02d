"""``lmshield attack``: plant a task-agnostic backdoor (POR, NeuBA, BToP) and verify it.

One command per entry of :data:`lmshield.attacks.ATTACKS`, made by :func:`_attack_command`, plus ``verify``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from lmshield.cli._common import (
    AllowPickle,
    CarrierColumn,
    CarrierDataset,
    CarrierGenerator,
    CarrierSplit,
    Device,
    Overwrite,
    Quiet,
    TextField,
    output_dir,
    removed_if_left_empty,
    starts_over,
)
from lmshield.errors import InputError, require_file

app = typer.Typer(
    help="Plant task-agnostic backdoors to test the defenses (ground truth in backdoor.json).",
    no_args_is_help=True,
    rich_markup_mode=None,
)


def parse_triggers(value: str | None) -> str | list[str] | None:
    """``default``, ``random`` or a comma-separated list of triggers."""
    if value is None or value in ("default", "random"):
        return value
    return [t.strip() for t in value.split(",") if t.strip()]


def load_vectors(path: Path):  # noqa: ANN201 - a torch tensor
    """PVs from a safetensors file (tensor ``vectors`` or its only tensor) or a JSON list of lists."""
    import torch

    from lmshield.models.loading import read_tensors

    require_file(path)
    if path.suffix == ".safetensors":
        tensors = read_tensors(path)
        if "vectors" not in tensors and len(tensors) != 1:
            raise InputError(f"{path}: expected a tensor named 'vectors'")
        return tensors.get("vectors", next(iter(tensors.values()))).float()
    try:
        return torch.tensor(json.loads(path.read_text(encoding="utf-8")), dtype=torch.float32)
    except (json.JSONDecodeError, ValueError, TypeError) as exc:
        raise InputError(f"{path}: not a JSON list of vectors ({exc})") from exc


def _attack_command(name: str) -> Callable[..., None]:
    @starts_over
    def command(
        out: Annotated[
            Path,
            typer.Option(
                help="Directory for the backdoored model and backdoor.json.", file_okay=False, callback=output_dir
            ),
        ],
        model: Annotated[str | None, typer.Option(help="Model directory or hub id; default: embedded MiniLM.")] = None,
        triggers: Annotated[
            str | None, typer.Option(help="default (cf mn tq qt mm pt), random (seeded) or a comma-separated list.")
        ] = None,
        vectors: Annotated[
            Path | None, typer.Option(help="PVs: safetensors or JSON (default: quarter vectors).")
        ] = None,
        texts: Annotated[Path | None, typer.Option(help="Carrier text: a text file or JSON Lines.")] = None,
        field: TextField = None,
        dataset: CarrierDataset = None,
        split: CarrierSplit = None,
        column: CarrierColumn = None,
        generator: CarrierGenerator = None,
        preset: Annotated[
            str, typer.Option(help="paper or release (the paper's settings), or fast (minutes on a CPU).")
        ] = "paper",
        num_texts: Annotated[int | None, typer.Option(help="Carrier sentences to train on.")] = None,
        epochs: Annotated[int | None, typer.Option(help="Epochs over the carrier sentences.")] = None,
        lr: Annotated[float | None, typer.Option(help="Learning rate.")] = None,
        batch_size: Annotated[int | None, typer.Option(help="Sentences per half batch.")] = None,
        max_length: Annotated[int | None, typer.Option(help="Token length limit.")] = None,
        seed: Annotated[int, typer.Option(help="Seed of every random choice.")] = 0,
        device: Device = "auto",
        allow_pickle: AllowPickle = False,
        verify: Annotated[bool, typer.Option(help="Verify the backdoor after planting.")] = True,
        overwrite: Overwrite = False,
        quiet: Quiet = False,
    ) -> None:
        from lmshield.attacks import attack_config, run_attack
        from lmshield.text import TextSource

        changes = {"num_texts": num_texts, "epochs": epochs, "lr": lr, "batch_size": batch_size}
        changes["max_length"] = max_length
        config = attack_config(name, preset, **{k: v for k, v in changes.items() if v is not None})
        source = TextSource.from_options(texts, dataset, generator=generator, field=field, split=split, column=column)
        with removed_if_left_empty(out):
            result = run_attack(
                config,
                model,
                out,
                preset=preset,
                triggers=parse_triggers(triggers),
                vectors=load_vectors(vectors) if vectors else None,
                text_source=source,
                seed=seed,
                device=device,
                allow_pickle=allow_pickle,
                progress=not quiet,
                verify=verify,
                overwrite=overwrite,
            )
        manifest = result.manifest
        typer.echo(
            f"{name}: {len(manifest.triggers)} trigger(s) trained in at {manifest.position}; model written to {out}"
        )
        typer.echo(f"variant: {manifest.variant}; {manifest.steps} steps, {manifest.seconds:.0f} s")
        if result.verification is not None:
            _print_verification(result.verification)
            if not result.verification.planted:
                raise typer.Exit(1)

    config_name = _config_name(name)
    command.__doc__ = (
        f"Plant a {config_name.removesuffix('Config')} backdoor (settings: lmshield.attacks.{config_name}).\n\n"
        "Exit code 0: planted (verified unless --no-verify); 1: written, but the verification says not planted; "
        "2: error."
    )
    return command


def _config_name(name: str) -> str:
    from lmshield.attacks import ATTACKS

    return ATTACKS[name].__name__


def _print_verification(verification) -> None:  # noqa: ANN001
    typer.echo(verification.table())
    if verification.note:
        typer.echo(verification.note)
    colour = typer.colors.GREEN if verification.planted else typer.colors.RED
    typer.secho(verification.summary(), fg=colour, bold=True)


@app.command("verify")
@starts_over
def verify_command(
    directory: Annotated[Path, typer.Argument(help="A model directory written by lmshield attack.")],
    original: Annotated[
        str | None, typer.Option(help="Original model to compare clean outputs with (default: recorded).")
    ] = None,
    texts: Annotated[Path | None, typer.Option(help="Sentences to insert triggers into (default: held-out).")] = None,
    field: TextField = None,
    count: Annotated[int, typer.Option(help="Held-out sentences when --texts is not given.", min=1)] = 200,
    seed: Annotated[int, typer.Option(help="Seed of trigger positions and held-out text.")] = 0,
    device: Device = "auto",
) -> None:
    """Check a planted backdoor: per-trigger sign agreement with its PV, triggered vs clean.

    Exit code 0: planted (every trigger >= 0.9); 1: not planted; 2: error.
    """
    from lmshield.attacks import verify_backdoor
    from lmshield.devices import resolve_device
    from lmshield.text import read_texts

    if field is not None and texts is None:
        raise InputError("--field goes with --texts")
    given = read_texts(texts, field) if texts else None
    verification = verify_backdoor(
        directory, texts=given, count=count, seed=seed, original=original, device=resolve_device(device)
    )
    _print_verification(verification)
    raise typer.Exit(0 if verification.planted else 1)


def _register() -> None:
    from lmshield.attacks import ATTACKS

    for name in ATTACKS:
        app.command(name)(_attack_command(name))


_register()
