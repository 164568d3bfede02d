"""Plots of a scan: seeds against the thresholds, and the sign pattern of each PV."""

from __future__ import annotations

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
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def plot_pv_signs(result: ScanResult, path: str | Path) -> Path | None:
    """One row per PV, one column per hidden dimension: red positive, blue negative."""
    if result.num_pvs == 0:
        return None
    signs = result.pvs.sign().numpy()
    fig, ax = plt.subplots(figsize=(8, 0.5 + 0.45 * len(signs)), dpi=110)
    ax.imshow(signs, aspect="auto", cmap="coolwarm", vmin=-1, vmax=1, interpolation="nearest")
    ax.set_yticks(range(len(signs)), [f"PV {i}" for i in range(len(signs))])
    ax.set_xlabel("hidden dimension")
    ax.set_title("sign pattern of each predefined vector found")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
