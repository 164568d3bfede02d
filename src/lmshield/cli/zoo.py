"""``lmshield zoo``: build a zoo of clean and backdoored models from a YAML spec, then scan it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lmshield.cli._common import Quiet, friendly_errors, output_dir

app = typer.Typer(
    help="Build a zoo of clean and backdoored models and measure how well scanning detects them.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

Executor = Annotated[str, typer.Option(help="sequential (in this process) or ray (local Ray or --address).")]
Address = Annotated[str | None, typer.Option(help="Address of an existing Ray cluster (with --executor ray).")]
NumCpus = Annotated[int | None, typer.Option(help="CPUs of a local Ray started on the fly (default: all).")]


@app.command("build")
@friendly_errors
def build_command(
    spec: Annotated[Path, typer.Argument(help="The zoo spec (YAML).")],
    out: Annotated[
        Path,
        typer.Option(
            help="Zoo directory (resumable: finished models are skipped).", file_okay=False, callback=output_dir
        ),
    ],
    executor: Executor = "sequential",
    address: Address = None,
    num_cpus: NumCpus = None,
    quiet: Quiet = False,
) -> None:
    """Build every model of SPEC into OUT/id-NNNN/ and write OUT/METADATA.csv."""
    from lmshield.zoo import build_zoo, load_spec

    rows = build_zoo(load_spec(spec), out, executor=executor, address=address, num_cpus=num_cpus, progress=not quiet)
    backdoored = sum(r["truth"] == "backdoored" for r in rows)
    failed = [r["model_id"] for r in rows if r["planted"] == "false"]
    typer.echo(f"{len(rows)} models in {out} ({backdoored} backdoored, {len(rows) - backdoored} clean)")
    if failed:
        typer.secho(f"backdoor not verified (agreement < 0.9) in: {', '.join(failed)}", fg=typer.colors.YELLOW)


@app.command("scan")
@friendly_errors
def scan_command(
    zoo_dir: Annotated[Path, typer.Argument(help="A zoo directory made by lmshield zoo build.")],
    results: Annotated[
        Path | None,
        typer.Option(help="Where results go (default: ZOO_DIR/scans).", file_okay=False, callback=output_dir),
    ] = None,
    preset: Annotated[str | None, typer.Option(help="Scanner preset (default: the spec's scan section).")] = None,
    position: Annotated[
        str | None,
        typer.Option(help="Watched position(s) for every model: cls, mask, ... or cls,mask (backdoored if any is)."),
    ] = None,
    max_seeds: Annotated[int | None, typer.Option(help="Seeds per model.")] = None,
    lr: Annotated[float | None, typer.Option(help="Scanner learning rate.")] = None,
    executor: Executor = "sequential",
    address: Address = None,
    num_cpus: NumCpus = None,
    quiet: Quiet = False,
    fresh: Annotated[bool, typer.Option(help="Rescan every model: discard earlier results and progress.")] = False,
) -> None:
    """Scan every model of ZOO_DIR; write detection.csv/.md, metrics.json and roc.png (a rerun resumes)."""
    from lmshield.zoo import scan_zoo

    overrides = {"preset": preset, "position": position, "max_seeds": max_seeds, "lr": lr}
    found = scan_zoo(
        zoo_dir,
        results=results,
        overrides=overrides,
        executor=executor,
        address=address,
        num_cpus=num_cpus,
        progress=not quiet,
        fresh=fresh,
    )
    typer.echo(found.markdown())
    typer.echo(f"results: {found.directory}")
