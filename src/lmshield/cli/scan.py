"""``lmshield scan``: is this encoder backdoored?"""

from __future__ import annotations

import re
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
    Fresh,
    Quiet,
    TextField,
    friendly_errors,
    output_dir,
    refuse_foreign,
)
from lmshield.errors import EXIT_BACKDOORED, EXIT_CLEAN

SHOWN_PVS = 10  # a search scan can find dozens (sub-triggers): the rest are in report.md


def _default_out(model: str | None) -> Path:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(model).name if model else "all-MiniLM-L6-v2").strip("-")
    return Path("scans") / (name or "model")


@friendly_errors
def scan_command(
    model: Annotated[
        str | None, typer.Argument(help="Model directory or hub id; default: embedded all-MiniLM-L6-v2.")
    ] = None,
    position: Annotated[str, typer.Option(help="Watched output: auto, cls, mask, last or a token index.")] = "auto",
    texts: Annotated[Path | None, typer.Option(help="Carrier text: a text file (one a line) or JSON Lines.")] = None,
    field: TextField = None,
    dataset: CarrierDataset = None,
    split: CarrierSplit = None,
    column: CarrierColumn = None,
    generator: CarrierGenerator = None,
    mode: Annotated[str, typer.Option(help="detect: stop at the first PV; search: collect every PV.")] = "detect",
    max_seeds: Annotated[
        int | None, typer.Option(help="Seeds to try (default: the preset's; default 24, fast 8, release 30).")
    ] = None,
    seed: Annotated[int, typer.Option(help="First seed; the same seed gives the same verdict.")] = 0,
    preset: Annotated[str, typer.Option(help="Settings preset: default, fast or release.")] = "default",
    lr: Annotated[
        float | None, typer.Option(help="Soft-trigger step size (default: the preset's; 5e-4, release 5e-5).")
    ] = None,
    distance_threshold: Annotated[
        float | None,
        typer.Option(help="Distance a PV must reach (default: the preset's; 3.0 relative, release 0.2 absolute)."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Result directory (resumable); default scans/<model>.", file_okay=False, callback=output_dir),
    ] = None,
    fresh: Fresh = False,
    device: Device = "auto",
    allow_pickle: AllowPickle = False,
    quiet: Quiet = False,
) -> None:
    """Scan an encoder for a task-agnostic backdoor (LMSanitator PV mining).

    Exit code 0: clean; 3: backdoored; 2: error.
    """
    from lmshield.defenses.sanitizer import SanitizerConfig, scan
    from lmshield.defenses.sanitizer.result import SCAN_JSON
    from lmshield.defenses.sanitizer.scanner import check_outside
    from lmshield.locks import holding
    from lmshield.progress import PROGRESS_JSON
    from lmshield.reports import write_scan_report
    from lmshield.text import TextSource

    overrides: dict[str, object] = {"mode": mode, "seed": seed}
    optional = {"max_seeds": max_seeds, "lr": lr, "distance_threshold": distance_threshold}
    overrides.update({name: value for name, value in optional.items() if value is not None})
    config = SanitizerConfig.preset(preset, **overrides)
    source = TextSource.from_options(texts, dataset, generator=generator, field=field, split=split, column=column)
    out_dir = out or _default_out(model)
    # a scan always keeps its progress beside its result: a scan.json alone may be a user's file of that name
    refuse_foreign(out_dir, SCAN_JSON, "scan result (with its progress)", ours=(PROGRESS_JSON,))
    check_outside(out_dir, model if model is not None and Path(model).is_dir() else None)  # before the lock
    with holding(out_dir):  # the report too: a second run must not start between the result and its report
        result = scan(
            model,
            config,
            position=position,
            text_source=source,
            out_dir=out_dir,
            device=device,
            allow_pickle=allow_pickle,
            progress=not quiet,
            fresh=fresh,
        )
        report = write_scan_report(result, out_dir)
    colour = typer.colors.RED if result.is_backdoored else typer.colors.GREEN
    typer.secho(result.summary(), fg=colour, bold=True)
    if result.caveat:
        typer.secho(f"caveat: {result.caveat}", fg=typer.colors.YELLOW)
    for index in range(min(result.num_pvs, SHOWN_PVS)):
        typer.echo(f"  PV {index}: trigger hint {result.trigger_hint(index)}")
    if result.num_pvs > SHOWN_PVS:
        typer.echo(f"  ... {result.num_pvs - SHOWN_PVS} more PVs in the report")
    typer.echo(f"report: {report}")
    raise typer.Exit(EXIT_BACKDOORED if result.is_backdoored else EXIT_CLEAN)
