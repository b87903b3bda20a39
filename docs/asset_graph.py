"""Draw the asset graph of the definitions: docs/img/asset_graph.png, and asset_graph.json beside it.

Usage: .venv/bin/python docs/asset_graph.py

Columns are the assets' depth in the graph, colours their group; an asset's checks (which run in its own
step) are listed under it; the dbt models are one box. The JSON holds the same nodes and edges:
tests/integration/test_ingest_assets.py compares it with the definitions, so the figure cannot go stale
without a test failing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DBT = "dbt_qc models"
GROUP_COLOURS = {"ingest": "#4477aa", "registration": "#66ccee", "annotation": "#228833", "patches": "#ccbb44",
                 "exports": "#ee6677", "training": "#aa3377", "predictions": "#bbbbbb", "qc": "#888888"}


def graph_description() -> dict:
    """Nodes (asset, group, checks) and edges of the definitions, the dbt models folded into one node."""
    import sthelar_definitions

    graph = sthelar_definitions.defs.resolve_asset_graph()
    dbt_keys = {k for k in graph.get_all_asset_keys() if graph.get(k).group_name == "qc" and
                k.to_user_string() != "qc_dashboard"}

    def name(key) -> str:
        return DBT if key in dbt_keys else key.to_user_string()

    nodes: dict[str, dict] = {}
    for key in graph.get_all_asset_keys():
        if key.to_user_string().startswith("lineage/"):
            continue
        n = nodes.setdefault(name(key), {"group": "qc" if key in dbt_keys else graph.get(key).group_name or "",
                                         "checks": []})
        if key not in dbt_keys:
            n["checks"] = sorted(c.name for c in graph.asset_check_keys if c.asset_key == key)
    edges = sorted({(name(p), name(k)) for k in graph.get_all_asset_keys() for p in graph.get(k).parent_keys
                    if name(p) != name(k) and name(p) in nodes and name(k) in nodes})
    return {"nodes": dict(sorted(nodes.items())), "edges": [list(e) for e in edges]}


def _depths(desc: dict) -> dict[str, int]:
    parents: dict[str, list[str]] = {n: [] for n in desc["nodes"]}
    for a, b in desc["edges"]:
        parents[b].append(a)
    depth: dict[str, int] = {}

    def of(n: str) -> int:
        if n not in depth:
            depth[n] = 1 + max((of(p) for p in parents[n]), default=-1)
        return depth[n]

    for n in desc["nodes"]:
        of(n)
    return depth


def draw(desc: dict, out: Path) -> None:
    """Boxes by depth (the slide pipeline on top, the cohort below), coloured by group, checks inside."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    depth = _depths(desc)
    per_band = 7  # the slide pipeline on top, the cohort work (dataset, models, QC) below
    columns: dict[int, list[str]] = {}
    for n in sorted(desc["nodes"], key=lambda n: (desc["nodes"][n]["group"], n)):
        columns.setdefault(depth[n], []).append(n)
    tallest = max(len(v) for v in columns.values())
    pos = {}
    for d, names in columns.items():
        band, col = divmod(d, per_band)
        for i, n in enumerate(names):
            pos[n] = (col * 2.2, -band * (tallest * 1.15 + 1.0) - (i - (len(names) - 1) / 2) * 1.15)
    width = 2.2 * min(per_band, max(columns) + 1)
    height = (max(columns) // per_band + 1) * (tallest * 1.15 + 1.0)
    fig, ax = plt.subplots(figsize=(width + 0.6, height + 0.8), dpi=110)
    for a, b in desc["edges"]:
        (x0, y0), (x1, y1) = pos[a], pos[b]
        faint = b == DBT  # every lineage table feeds the dbt models
        start = (x0 + 0.85, y0) if x1 > x0 else (x0, y0 - 0.38)
        end = (x1 - 0.85, y1) if x1 > x0 else (x1, y1 + 0.38)
        ax.annotate("", xy=end, xytext=start,
                    arrowprops={"arrowstyle": "->", "color": "#dddddd" if faint else "#999999", "lw": 0.7,
                                "shrinkA": 0, "shrinkB": 0})
    for n, (x, y) in pos.items():
        node = desc["nodes"][n]
        colour = GROUP_COLOURS.get(node["group"], "#dddddd")
        ax.add_patch(FancyBboxPatch((x - 0.85, y - 0.38), 1.7, 0.76, boxstyle="round,pad=0.02", fc=colour, ec="none",
                                    alpha=0.9))
        ax.text(x, y + (0.16 if node["checks"] else 0), n, ha="center", va="center", fontsize=7.5, color="white",
                weight="bold")
        if node["checks"]:  # checks that run in the asset's own step
            ax.text(x, y - 0.12, "\n".join(f"✓ {c}" for c in node["checks"]), ha="center", va="center", fontsize=5,
                    color="white", linespacing=1.1)
    for i, (g, c) in enumerate(GROUP_COLOURS.items()):
        ax.text(i * 1.75 - 0.8, max(p[1] for p in pos.values()) + 0.9, g, color=c, fontsize=8, weight="bold")
    ax.set_xlim(-1.0, width - 1.0)
    ax.set_ylim(min(p[1] for p in pos.values()) - 0.8, max(p[1] for p in pos.values()) + 1.4)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def main() -> int:
    """Write the figure and its JSON under docs/img/."""
    desc = graph_description()
    img = ROOT / "docs" / "img"
    draw(desc, img / "asset_graph.png")
    (img / "asset_graph.json").write_text(json.dumps(desc, indent=1) + "\n")
    print(f"{len(desc['nodes'])} nodes, {len(desc['edges'])} edges -> {img / 'asset_graph.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
