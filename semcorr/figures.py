"""Figures of the SPair-71k paper: difficulty pie charts (Fig. 1), azimuth circular histograms (Fig. 2)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from semcorr import atomic  # noqa: E402
from semcorr.builders.statistics import FACTORS, SPLIT_TITLES  # noqa: E402
from semcorr.store import NUM_AZIMUTH_BINS, SPLIT_NAMES  # noqa: E402

LEVEL_COLORS = ["#4c9f70", "#f2b134", "#d1495b", "#6c5b7b"]


def _save(fig: plt.Figure, path: Path) -> Path:
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    atomic.write_bytes(Path(path), buffer.getvalue())
    return Path(path)


def plot_difficulty_pies(difficulty: pd.DataFrame, path: Path) -> Path:
    """One pie per (split row of Table 1, factor in the table): the share of pairs at each level."""
    rows = list(difficulty.index)
    present = set(difficulty.columns.get_level_values(0)) if len(difficulty.columns) else set()
    factors = [factor for factor in FACTORS if factor[1] in present] or list(FACTORS[:1])
    fig, axes = plt.subplots(len(rows), len(factors), figsize=(3.2 * len(factors), 2.9 * len(rows)), squeeze=False)
    for r, split in enumerate(rows):
        for c, (_, title, levels) in enumerate(factors):
            ax = axes[r, c]
            counts = np.array([difficulty.loc[split, (title, level)] if (title, level) in difficulty.columns else 0
                               for level in levels], dtype=float)
            if counts.sum() == 0:
                ax.text(0.5, 0.5, "no pairs", ha="center", va="center")
                ax.axis("off")
            else:
                keep = counts > 0
                ax.pie(counts[keep], labels=[f"{lv}\n{int(n):,}" for lv, n in zip(levels, counts) if n > 0],
                       colors=[LEVEL_COLORS[i] for i in np.flatnonzero(keep)], autopct="%1.0f%%",
                       startangle=90, counterclock=False, textprops={"fontsize": 8},
                       wedgeprops={"linewidth": 1, "edgecolor": "white"})
                ax.set_aspect("equal")
            ax.set_title(f"{title} ({split})", fontsize=10)
    fig.suptitle("Pair difficulty by split (SPair-71k Fig. 1)", fontsize=12)
    fig.tight_layout()
    return _save(fig, path)


def plot_azimuth_histograms(azimuth: pd.DataFrame, path: Path) -> Path:
    """Circular histograms of image azimuth bins: one row per category, one column per split."""
    categories = sorted(azimuth["category"].unique()) or ["(none)"]
    fig, axes = plt.subplots(len(categories), len(SPLIT_NAMES), subplot_kw={"projection": "polar"},
                             figsize=(3.0 * len(SPLIT_NAMES), 2.8 * len(categories)))
    axes = np.atleast_2d(axes)
    width = 2 * np.pi / NUM_AZIMUTH_BINS
    angles = np.arange(NUM_AZIMUTH_BINS) * width
    peak = max(int(azimuth["images"].max()) if len(azimuth) else 1, 1)
    for r, category in enumerate(categories):
        for c, split in enumerate(SPLIT_NAMES):
            ax = axes[r, c]
            sub = azimuth[(azimuth["category"] == category) & (azimuth["split"] == split)]
            counts = np.zeros(NUM_AZIMUTH_BINS)
            counts[sub["azimuth_bin"].to_numpy(dtype=int)] = sub["images"].to_numpy()
            ax.bar(angles, counts, width=width * 0.9, color=LEVEL_COLORS[c], alpha=0.85, edgecolor="black",
                   linewidth=0.5)
            ax.set_theta_zero_location("N")
            ax.set_theta_direction(-1)
            ax.set_ylim(0, peak)
            ax.set_xticks(angles)
            ax.set_xticklabels([str(i) for i in range(NUM_AZIMUTH_BINS)], fontsize=7)
            ax.tick_params(axis="y", labelsize=6)
            ax.set_title(f"{category} / {SPLIT_TITLES[split]} ({int(counts.sum())} images)", fontsize=9, pad=12)
    fig.suptitle("Azimuth bins per split (SPair-71k Fig. 2)", fontsize=12)
    fig.tight_layout()
    return _save(fig, path)
