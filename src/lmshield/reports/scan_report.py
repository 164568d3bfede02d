"""A Markdown report of a scan, with its plots, written beside scan.json."""

from __future__ import annotations

from pathlib import Path

from lmshield.defenses.sanitizer.result import ScanResult, readable_token
from lmshield.progress import write_text
from lmshield.reports.plots import plot_pv_signs, plot_seeds

REPORT_FILE = "report.md"


def _seed_table(result: ScanResult) -> list[str]:
    lines = [
        "| seed | status | epochs | distance | collapse | sign consistency | legitimate | why |",
        "|---:|---|---:|---:|---:|---:|---|---|",
    ]
    for t in result.trace:
        consistency = "" if t.sign_consistency is None else f"{t.sign_consistency:.2f}"
        seed = str(t.seed) if t.parts is None else f"{t.seed} {t.parts}"
        lines.append(
            f"| {seed} | {t.status} | {t.epochs} | {t.final_distance:.3f} | {t.final_collapse:.4f} "
            f"| {consistency} | {'yes' if t.legitimate else 'no'} | {t.reason} |"
        )
    return lines


def _pv_section(result: ScanResult) -> list[str]:
    if result.num_pvs == 0:
        return ["No predefined vector was found: no seed passed every check."]
    lines = []
    for index, tokens in enumerate(result.nearest_tokens):
        used = result.trigger_parts(index)
        hint = ", ".join("/".join(readable_token(t) for t in tokens[i][:3]) for i in used)
        positives = float((result.pvs[index] > 0).float().mean())
        lines.append(
            f"- **PV {index}** ({positives:.0%} positive dimensions); tokens the trigger vectors moved toward: {hint}"
            + (f" (sub-trigger: vectors {used} of its seed's trigger)" if result.is_sub_trigger(index) else "")
        )
    return lines


def write_scan_report(result: ScanResult, directory: str | Path) -> Path:
    """Write ``report.md`` and its PNG plots into ``directory``; return the report's path."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    plot_seeds(result, out / "seeds.png")
    signs = plot_pv_signs(result, out / "pv_signs.png")
    if signs is None:  # a clean verdict has no sign plot: none of an earlier scan's may stand beside it
        (out / "pv_signs.png").unlink(missing_ok=True)
    config, model = result.config, result.model
    lines = [
        f"# lmshield scan: {result.verdict.upper()}",
        "",
        f"- model: `{model['source']}` ({model['model_type']}, hidden {model['hidden_size']}, "
        f"embedding {model['embedding_size']})",
        f"- fingerprint: `{model['fingerprint']}`",
        f"- watched position: `{result.position}`; carrier text: {result.text_source}",
        f"- score: **{result.score:.3f}** (distance threshold {config.distance_threshold}, "
        f"{config.distance_scale}; clean-output spread {result.spread:.4g})"
        + (f": {result.past_threshold_note} (see the seed table)" if result.past_threshold_note else ""),
        f"- predefined vectors found: **{result.num_pvs}** in {result.num_seeds} seed(s), mode `{config.mode}`",
        f"- time: {_time_line(result.timings)}",
        *([f"- **caveat**: {result.caveat}"] if result.caveat else []),
        "",
        "## Predefined vectors",
        "",
        *_pv_section(result),
        "",
        "## Seeds",
        "",
        "![seeds against the thresholds](seeds.png)",
        "",
        *_seed_table(result),
        "",
    ]
    if signs is not None:
        lines += ["## Sign patterns", "", "![sign pattern of each PV](pv_signs.png)", ""]
    lines += [
        "## How to read this",
        "",
        "Each seed optimises a soft trigger that pushes the watched output away from the clean output and "
        "onto one point for every input. A backdoored encoder has such collapse points (its predefined "
        "vectors) far from its clean outputs; a clean encoder lets the trigger move its output only a "
        "little. Distances are relative to the spread of the model's clean outputs.",
        "",
    ]
    path = out / REPORT_FILE
    write_text(path, "\n".join(lines))
    return path


def _time_line(timings: dict[str, float]) -> str:
    """Wall time, the work behind it (seeds optimise side by side: a batch steps several), and what was resumed."""
    work = f"{int(timings.get('steps', 0))} optimisation steps over all seeds, {int(timings.get('batches', 0))} batches"
    resumed = int(timings.get("resumed_seeds", 0))
    earlier = f"; {resumed} seed(s) from an earlier run, whose time is not counted" if resumed else ""
    return f"{timings.get('total_s', 0.0):.1f} s ({work}{earlier})"
