"""Every plot lmshield writes (matplotlib, Agg backend): a scan's seeds and PV signs, a detector's score
histogram, a ROC curve."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from lmshield.defenses.sanitizer.result import ScanResult

_COLOURS = {"accepted": "tab:red", "rejected": "tab:orange", "abandoned": "tab:gray"}


def plot_seeds(result: ScanResult, path: str | Path) -> Path:
    """Per-seed final distance vs collapse, with the decision thresholds drawn in."""
    config = result.config
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for status, colour in _COLOURS.items():
        traces = [t for t in result.trace if t.status == status and t.parts is None]  # seeds, not sub-triggers
        if traces:
            ax.scatter(
                [t.final_distance for t in traces],
                [t.final_collapse for t in traces],
                c=colour,
                label=f"{status} ({len(traces)})",
                s=36,
                edgecolors="black",
                linewidths=0.4,
            )
    ax.axvline(config.distance_threshold, color="tab:red", linestyle="--", linewidth=1, label="distance threshold")
    ax.axvline(config.abandon_threshold, color="tab:gray", linestyle=":", linewidth=1, label="abandon threshold")
    ax.axhline(config.collapse_threshold, color="tab:blue", linestyle="--", linewidth=1, label="collapse threshold")
    ax.set_xscale("log")
    ax.set_xlabel(f"distance from clean output ({config.distance_scale})")
    ax.set_ylabel("collapse (entropy / ln batch)")
    ax.set_title(f"PV mining seeds: {result.verdict}")
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def plot_pv_signs(result: ScanResult, path: str | Path) -> Path | None:
    """One row per PV, one column per hidden dimension: red positive, blue negative."""
    if result.num_pvs == 0:
        return None
    signs = result.pvs.sign().numpy()
    fig, ax = plt.subplots(figsize=(8, 0.5 + 0.45 * len(signs)), dpi=110)
    image = ax.imshow(signs, aspect="auto", cmap="coolwarm", vmin=-1, vmax=1, interpolation="nearest")
    legend = fig.colorbar(image, ax=ax, ticks=[-1, 1], fraction=0.04)
    legend.ax.set_yticklabels(["negative", "positive"])
    ax.set_yticks(range(len(signs)), [f"PV {i}" for i in range(len(signs))])
    ax.set_xlabel("hidden dimension")
    ax.set_title("sign pattern of each predefined vector found")
    return _save(fig, path)


def plot_score_histogram(
    clean_scores: Sequence[float],
    poisoned_scores: Sequence[float],
    threshold: float,
    path: str | Path,
    *,
    title: str = "PSIM confidence",
    xlabel: str = "PSIM score (top probability)",
) -> Path:
    """Histogram of a detector's scores, clean vs triggered inputs, with the threshold drawn in."""
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    bins = [i / 40 for i in range(41)] if max([*clean_scores, *poisoned_scores, 0.0]) <= 1 else 40
    ax.hist(list(map(float, clean_scores)), bins=bins, alpha=0.6, label=f"clean ({len(clean_scores)})")
    ax.hist(list(map(float, poisoned_scores)), bins=bins, alpha=0.6, label=f"triggered ({len(poisoned_scores)})")
    ax.axvline(threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {threshold:.3f}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("inputs")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_roc_curve(fpr: Sequence[float], tpr: Sequence[float], label: str, title: str, path: str | Path) -> Path:
    """A ROC curve with the chance diagonal."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=110)
    ax.plot(fpr, tpr, marker="o", label=label)
    ax.plot([0, 1], [0, 1], linestyle=":", color="gray", label="chance")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def _save(fig: plt.Figure, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
