"""Static figures for asset metadata and dashboards (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

# one colour per category, stable across slides and pages
CATEGORY_COLOURS = {
    "T_NK": "#1f77b4", "B_Plasma": "#aec7e8", "Myeloid": "#ff7f0e", "Blood_vessel": "#d62728",
    "Fibroblast_Myofibroblast": "#8c564b", "Epithelial": "#2ca02c", "Specialized": "#e377c2",
    "Melanocyte": "#17becf", "Stem_like": "#bcbd22", "Glioblastoma": "#9467bd", "Unknown": "#7f7f7f",
    "Less10": "#d9d9d9",
}


def category_map_png(labels: pd.DataFrame, path: str | Path, max_points: int = 200_000) -> Path:
    """Cells at their centroids (µm), coloured by category."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = labels if len(labels) <= max_points else labels.sample(max_points, random_state=0)
    fig, ax = plt.subplots(figsize=(6, 5), dpi=100)
    for cat, sub in df.groupby("category"):
        ax.scatter(sub["x_centroid"], sub["y_centroid"], s=2, c=CATEGORY_COLOURS.get(cat, "#000000"), label=cat,
                   linewidths=0)
    ax.set_aspect("equal")
    ax.invert_yaxis()
    ax.set_xlabel("x (µm)")
    ax.set_ylabel("y (µm)")
    ax.legend(markerscale=4, fontsize=6, loc="center left", bbox_to_anchor=(1, 0.5), frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
