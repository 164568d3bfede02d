"""A Markdown report of one PSIM evaluation (a released model on a task), written beside its table and plot."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmshield.defenses.psim.config import PSIMConfig
from lmshield.progress import write_text

if TYPE_CHECKING:
    from lmshield.evaluation.psim_eval import PSIMRow, SweepPoint

PSIM_REPORT_FILE = "report.md"
SWEEP_FRRS = (0.01, 0.02, 0.05, 0.10)


def far_at_frr(sweep: Sequence[SweepPoint], frr: float) -> tuple[float, float] | None:
    """(threshold, FAR) of the lowest threshold whose FRR is at most ``frr``; ``None`` when none is."""
    allowed = [p for p in sweep if p.frr <= frr]
    if not allowed:
        return None
    best = min(allowed, key=lambda p: p.threshold)
    return best.threshold, best.far


def _sweep_lines(sweep: Sequence[SweepPoint]) -> list[str]:
    lines = ["| FRR at most | threshold | FAR (triggered inputs passed) |", "|---:|---:|---:|"]
    for frr in SWEEP_FRRS:
        point = far_at_frr(sweep, frr)
        if point is not None:
            lines.append(f"| {frr:.0%} | {point[0]:.4f} | {format_metric(point[1])} |")
    return lines


def _detection_lines(row: PSIMRow) -> list[str]:
    """PSIM's FRR, FAR and ROC-AUC; with no triggered input (every test input has the target label), why the
    attack's figures are dashes."""
    lines = [
        f"- detection: FRR **{format_percent(row.frr)}** of {_count(row.clean_count)}clean test inputs flagged"
        f"{format_interval(row.interval('frr'))}, FAR **{format_percent(row.far)}** of "
        f"{_count(row.triggered_count)}triggered inputs passed{format_interval(row.interval('far'))}, "
        f"ROC-AUC **{format_metric(row.auroc)}**"
    ]
    if math.isnan(row.far):
        lines.append(
            "- note: no test input lies outside the target label, so none was triggered: ASR, FAR and ROC-AUC do "
            "not apply; evaluate on test data with other labels"
        )
    return lines


def _settings_line(settings: dict[str, Any], threshold: float, psim_texts: int | None) -> str:
    psim = PSIMConfig.from_dict(settings.get("psim", {})).to_dict()
    if settings.get("target_frr") is not None:
        how = f"calibrated to {settings['target_frr']:.1%} FRR on held-out dev texts"
    elif psim.get("threshold") is not None:
        how = "fixed by the settings"
    else:
        how = "the release's cut, carried to the number of classes"
    texts = psim_texts if psim_texts is not None else settings.get("psim_train") or "all"
    reads = "the highest of the input's and each clause's" if psim["span"] == "clauses" else "the whole input's"
    kind = "top probability" if psim["score_kind"] == "probability" else "normalised top probability"
    return (
        f"- PSIM: {psim['method']}, {psim['epochs']} epoch(s) on {texts} training texts with random labels; "
        f"score: {reads} {kind}; threshold **{threshold:.4f}** ({how})"
    )


def _gate_line(gate: str, threshold: float) -> str:
    return f"- PSIM: the one fitted in `{gate}`, not on this model; threshold **{threshold:.4f}** (its own)"


def _release_caveat(release_check: str) -> list[str]:
    if release_check.startswith("CONTROL"):
        return [
            "- **control release**: nothing was poisoned, so ASR here is what a model without a backdoor answers on "
            "the triggered inputs: the baseline a backdoored release's figures rise above"
        ]
    if not release_check.startswith("NOT PLANTED"):
        return []
    return [
        f"- **caveat**: the release's own check (backdoor.json) says {release_check}: the figures below measure a "
        "model without a working backdoor, not PSIM against one"
    ]


def _uncalibrated_note(settings: dict[str, Any], row: PSIMRow) -> list[str]:
    """A fixed threshold above the scores PSIM gives triggered inputs, while it ranks them well: say what to do."""
    if settings.get("target_frr") is not None or not (row.far >= 0.5 and row.auroc >= 0.8):
        return []
    return [
        f"- note: the fixed threshold passes {row.far:.0%} of the triggered inputs although PSIM ranks them above "
        f"clean ones (ROC-AUC {row.auroc:.3f}); calibrate it on held-out clean texts (`--target-frr`)"
    ]


def _baseline_lines(rows: Sequence[PSIMRow]) -> list[str]:
    if not rows:
        return []
    lines = [
        "## Baselines on the same victims",
        "",
        "| defense | strategy | clean acc | ASR | ASR + defense | clean acc + defense | FRR | FAR | AUROC "
        "| threshold |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        values = (r.clean_accuracy, r.asr, r.asr_psim, r.clean_accuracy_psim, r.frr, r.far, r.auroc, r.threshold)
        lines.append(f"| {r.defense} | {r.strategy} | " + " | ".join(format_metric(v) for v in values) + " |")
    return [
        *lines,
        "",
        "STRIP refuses inputs like PSIM (calibrated on held-out dev texts); ONION and the paraphrases change the "
        "input instead, so they have no FRR, FAR or ROC-AUC. STRIP's threshold is on its entropy score, ONION's on "
        "a word's suspicion (the perplexity its removal saves).",
        "",
    ]


def format_metric(value: float) -> str:
    """Three decimals, or ``-`` for a metric that does not apply (NaN)."""
    return "-" if math.isnan(value) else f"{value:.3f}"


def format_percent(value: float) -> str:
    """A share as a percentage with one decimal, or ``-`` for a metric that does not apply (NaN)."""
    return "-" if math.isnan(value) else f"{value:.1%}"


def format_interval(interval: tuple[float, float]) -> str:
    """`` (95 % interval a-b %)`` for a share's interval; empty where it is unknown (NaN)."""
    low, high = interval
    return "" if math.isnan(low) else f" (95% interval {low:.1%}-{high:.1%})"


def _count(count: int) -> str:
    return f"{count} " if count else ""


def write_psim_report(
    directory: str | Path,
    *,
    rows: Sequence[PSIMRow],
    sweep: Sequence[SweepPoint],
    manifest: dict[str, Any],
    settings: dict[str, Any],
    threshold: float,
    model: str,
    histogram: str = "psim_confidence.png",
    baselines: Sequence[PSIMRow] = (),
    release_check: str = "",
    psim_texts: int | None = None,
    gate: str = "",
) -> Path:
    """Write ``report.md`` into ``directory`` (next to the histogram it shows); return its path.

    ``release_check``: the verdict of the release's own check (``PoisonManifest.verdict()``); a ``NOT PLANTED``
    one heads the report, since every figure below is then measured against no working backdoor, and a ``CONTROL``
    one is named as the no-backdoor baseline it is. ``psim_texts``:
    how many training texts PSIM was fitted on (the settings' ``psim_train`` only caps them). ``gate``: the folder
    of a PSIM fitted elsewhere that gated the victims (the settings' PSIM was then not fitted)."""
    if not rows:
        raise ValueError("a PSIM report needs at least one row")
    first = rows[0]
    lines = [
        f"# lmshield PSIM evaluation: {first.attack} on {first.dataset}",
        "",
        f"- released model: `{model}`",
        f"- attack (ground truth from backdoor.json; PSIM never sees it): {manifest.get('attack')}, "
        f"trigger {', '.join(map(str, manifest.get('triggers', [])))}, target label {manifest.get('target_label')}, "
        f"{manifest.get('label_mode')}-label, {manifest.get('poison_count')} of {manifest.get('num_texts')} texts",
        *_release_caveat(release_check),
        _gate_line(gate, threshold) if gate else _settings_line(settings, threshold, psim_texts),
        *_detection_lines(first),
        *_uncalibrated_note(settings, first),
        "",
        "## Victims",
        "",
        "| strategy | clean acc | ASR | ASR + PSIM | clean acc + PSIM | drop | flip ASR | flip ASR + PSIM "
        "| ASR + PSIM, 95% interval |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        values = (r.clean_accuracy, r.asr, r.asr_psim, r.clean_accuracy_psim, r.clean_accuracy_drop)
        metrics = " | ".join(format_metric(v) for v in (*values, r.flip_asr, r.flip_asr_psim))
        low, high = r.interval("asr_psim")
        lines.append(f"| {r.strategy} | {metrics} | {'-' if math.isnan(low) else f'{low:.3f}-{high:.3f}'} |")
    lines += [
        "",
        "How to read it:",
        "- *with PSIM* uses the release's scoring: a flagged triggered input counts as defended, a flagged clean "
        "input as an error, so the clean-accuracy drop is the price of the defense.",
        "- *ASR* counts every triggered non-target input labelled as the target; *flip ASR* only those the victim "
        "labels correctly without the trigger, leaving out its ordinary errors.",
        "- FRR, FAR and ROC-AUC describe PSIM alone and are the same for every victim.",
        "- the intervals (Wilson, 95 %) say how far a share may sit from the one measured on this many test inputs: "
        "an ASR target is met with confidence only when the interval's upper end is below it.",
        "",
        *_baseline_lines(baselines),
        "## Threshold sweep (clean and triggered test inputs)",
        "",
        *_sweep_lines(sweep),
        "",
        f"![PSIM confidence, clean vs triggered]({histogram})",
        "",
    ]
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    path = out / PSIM_REPORT_FILE
    write_text(path, "\n".join(lines))
    return path
