"""The cross-slide training dataset: a leakage-free, class-stratified split of the exported patches.

Splits are made of whole slides or of square spatial blocks, never of single patches: 256 px
patches overlap by 64 px, so a patch-level split shares pixels between train and test. With
blocks, a patch whose footprint reaches into a block of another split is dropped. Blocks (or
slides) are assigned greedily, rarest class first, to the split furthest below its share of
that class, so rare classes appear in every split whenever there are enough units to spread.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from sthelar_platform.core.categories import CategorySystem
from sthelar_platform.core.config import DatasetConfig, TrainingConfig
from sthelar_platform.core.errors import ConfigError, InputError, require_stage_output
from sthelar_platform.core.warehouse import CellViTLayoutFolder, SlideExportFolder

DATASET_CARD = "dataset_card.json"
from sthelar_platform.model import layouts
from sthelar_platform.model.layouts import LayoutInput
from sthelar_platform.tiling.exports import link_patch_file, skipped_magnification

SPLITS = ("train", "val", "test")


def assign_units(counts: pd.DataFrame, fractions: Mapping[str, float], seed: int = 0,
                 fixed: dict[str, str] | None = None) -> dict[str, str]:
    """Assign each unit (row: per-class nucleus counts) to a split, stratified by class.

    Units are taken in order of their rarest class (scarcest first); each goes to the split
    furthest below its target share of that class, in relative terms, so a split that has none
    of a class yet comes first.
    """
    fixed = dict(fixed or {})
    frac = np.array([fractions[s] for s in SPLITS], float)
    frac = frac / frac.sum()
    totals = counts.sum(0).to_numpy(float)
    have = np.zeros((len(SPLITS), counts.shape[1]))
    n_units = np.zeros(len(SPLITS))
    out: dict[str, str] = {}
    for unit, fixed_split in fixed.items():
        have[SPLITS.index(fixed_split)] += counts.loc[unit].to_numpy()
        n_units[SPLITS.index(fixed_split)] += 1
        out[unit] = fixed_split
    rng = np.random.default_rng(seed)
    rest = [u for u in counts.index if u not in fixed]
    rarity = totals / max(totals.sum(), 1)
    order = sorted(rest, key=lambda u: (float(np.min(np.where(counts.loc[u].to_numpy() > 0, rarity, np.inf))),
                                        rng.random()))
    target_units = frac * len(counts)
    for unit in order:
        c = counts.loc[unit].to_numpy(float)
        split: int
        if c.sum() == 0:
            split = int(np.argmax(target_units - n_units))
        else:
            k = int(np.argmin(np.where(c > 0, rarity, np.inf)))  # this unit's rarest class
            target = frac * max(totals[k], 1)
            deficit = (target - have[:, k]) / target  # relative: a split still without the class comes first
            # a split that has used up its share of units only takes one when every split has
            deficit = np.where(n_units < np.ceil(target_units), deficit, deficit - 2.0)
            split = int(np.argmax(deficit))
        have[split] += c
        n_units[split] += 1
        out[unit] = SPLITS[split]
    return out


def block_of(x0: np.ndarray, y0: np.ndarray, block_px: int) -> np.ndarray:
    """The spatial block id (``row_col``) of each patch origin."""
    return np.char.add(np.char.add((y0 // block_px).astype(str), "_"), (x0 // block_px).astype(str))


def split_patches(patches: pd.DataFrame, classes: tuple[str, ...], cfg: DatasetConfig, size: int = 256,
                  patients: Mapping[str, str | None] | None = None) -> pd.DataFrame:
    """``patches`` (slide_id, name, x0, y0, one count column per class) with ``unit`` and ``split`` added;
    patches straddling two splits are removed (``split`` = 'dropped').

    An optional ``extent`` column gives each patch's footprint side in the pixels of ``x0`` / ``y0``
    (default ``size``): patches of several magnifications, placed in level-0 pixels, share one split.
    ``patients`` maps slide ids to patient ids for ``split: patient`` (a slide without one is its own patient).
    """
    frame = patches.copy()
    mode = cfg.split
    if mode in ("slide", "patient"):
        if mode == "patient":
            owner = {s: (patients or {}).get(s) or f"slide:{s}" for s in frame["slide_id"].unique()}
            frame["unit"] = frame["slide_id"].map(owner)
        else:
            frame["unit"] = frame["slide_id"]
        if frame["unit"].nunique() < 3:
            raise ConfigError("training.yaml", "dataset.split", f"{mode} needs at least 3 {mode}s, got "
                              f"{frame['unit'].nunique()}", "add slides, or set dataset.split to block")
        test_units = frame.loc[frame["slide_id"].isin(cfg.test_slides), "unit"].unique()
        fixed = {u: "test" for u in test_units}
    elif mode == "block":
        b = int(cfg.block_px)
        frame["unit"] = frame["slide_id"] + ":" + block_of(frame["x0"].to_numpy(), frame["y0"].to_numpy(), b)
        fixed = {}
    else:
        raise ConfigError("training.yaml", "dataset.split", f"unknown split {mode!r}", "use slide, patient or block")
    unit_counts = frame.groupby("unit")[list(classes)].sum()
    assignment = assign_units(unit_counts, cfg.fractions, cfg.seed, fixed)
    frame["split"] = frame["unit"].map(assignment)
    if mode == "block":
        b = int(cfg.block_px)
        extent = frame["extent"].to_numpy() if "extent" in frame else np.full(len(frame), size)
        for fx, fy in ((0, 0), (1, 0), (0, 1), (1, 1)):  # the footprint's four corners
            other = frame["slide_id"] + ":" + block_of(frame["x0"].to_numpy() + fx * (extent - 1),
                                                       frame["y0"].to_numpy() + fy * (extent - 1), b)
            crossing = other.map(assignment).fillna(frame["split"]) != frame["split"]
            frame.loc[crossing.to_numpy(), "split"] = "dropped"
    return frame


def class_weights(train_counts: np.ndarray) -> np.ndarray:
    """Inverse-frequency weights over the classes (background first, weight 1), mean 1 over seen classes."""
    c = np.asarray(train_counts, float)
    w = np.where(c > 0, c.sum() / np.maximum(c, 1) / max((c > 0).sum(), 1), 0.0)
    w = w / w[c > 0].mean() if (c > 0).any() else w
    return np.r_[1.0, w]


def gather_patches(exports: Path, slide_ids: list[str], magnification: str, grouping: str) -> pd.DataFrame:
    """The exported patches of one magnification and grouping across slides, with their QC and files."""
    need = ["name", "row", "col", "x0", "y0", "tissue", "downsample", "dice", "jaccard", "bpq"]
    frames = []
    for slide in slide_ids:
        d = SlideExportFolder(exports / slide).cellvit / magnification / grouping
        folder = CellViTLayoutFolder(d)
        cc = pd.read_csv(require_stage_output(folder.cell_count, folder.stage))
        qc = pd.read_csv(require_stage_output(folder.patches, folder.stage))
        missing = sorted(set(need) - set(qc.columns))
        if missing:
            raise InputError(folder.patches, f"lacks columns {missing} (written by an older version)",
                             f"materialize slide_export for slide {slide} again")
        cc["name"] = cc["Image"].str.removesuffix(".png")
        frames.append(cc.merge(qc[need], on="name").assign(slide_id=slide, magnification=magnification, source=str(d)))
    return pd.concat(frames, ignore_index=True)


def write_training_dataset(exports: Path, slide_ids: list[str], out: Path, cfg: TrainingConfig,
                           categories: CategorySystem, progress: Callable[[str], None] | None = None,
                           patients: Mapping[str, str | None] | None = None) -> dict:
    """Split every slide's exported patches once, then write ``<mag>/<grouping>/`` CellViT folders with
    splits.csv and each configured layout (``<layout>/<mag>/<grouping>/``, see ``layouts``).
    """
    dcfg = cfg.dataset
    mag, mags = dcfg.magnification, list(dcfg.magnifications or [dcfg.magnification])
    if mag not in mags:
        raise ConfigError("training.yaml", "dataset.magnification", f"{mag} is not among dataset.magnifications {mags}",
                          "add it to dataset.magnifications in training.yaml")
    card: dict = {"magnification": mag, "magnifications": mags, "split": dcfg.split, "slides": slide_ids,
                  "groupings": {}, "by_magnification": {}, "layouts": {}}
    if not slide_ids:
        raise InputError(exports, "no exported slides", "materialize slide_export for at least one slide")
    having = {m: [s for s in slide_ids if skipped_magnification(exports / s, m) is None] for m in mags}
    card["skipped"] = {m: sorted(set(slide_ids) - set(having[m])) for m in mags if set(slide_ids) - set(having[m])}
    if not having[mag]:
        raise InputError(exports, f"no exported slide has {mag} patches (the scans are coarser: "
                         f"{skipped_magnification(exports / slide_ids[0], mag)})",
                         "train at a magnification the scans have: set dataset.magnification (e.g. 20x) in training.yaml")
    mags = [m for m in mags if having[m]]
    for grouping in dcfg.groupings:
        classes = categories.groupings[grouping].classes
        patches = pd.concat([gather_patches(exports, having[m], m, grouping) for m in mags], ignore_index=True)
        placed = patches.assign(x0=patches["x0"] * patches["downsample"], y0=patches["y0"] * patches["downsample"],
                                extent=256 * patches["downsample"])  # level-0 pixels: one split for every magnification
        result = split_patches(placed, classes, dcfg, patients=patients)
        split = patches.assign(unit=result["unit"].to_numpy(), split=result["split"].to_numpy())
        for m in mags:
            this = split[split["magnification"] == m]
            kept = this[this["split"] != "dropped"]
            entry = _write_own_folder(kept, classes, out / m / grouping)
            entry["dropped_straddling"] = int((this["split"] == "dropped").sum())
            card["by_magnification"].setdefault(m, {})[grouping] = entry
            if m == mag:
                card["groupings"][grouping] = entry
            layout = LayoutInput(kept, classes, m, grouping)
            for name in dcfg.layouts:
                if progress:
                    progress(f"{name} {m} {grouping}")
                target = out / name / m / grouping
                written = {"sthelar": layouts.write_sthelar_layout, "cellvit_folds": layouts.write_cellvit_folds,
                           "hf": layouts.write_hf_layout}[name](layout, target, dcfg.hf)
                card["layouts"].setdefault(name, {})[f"{m}/{grouping}"] = written
    (out / DATASET_CARD).write_text(json.dumps(card, indent=2, default=int))
    return card


def _write_own_folder(kept: pd.DataFrame, classes: tuple[str, ...], target: Path) -> dict:
    """Our CellViT-style folder (what the platform trains on): hard links, counts, types, splits, weights."""
    dst = CellViTLayoutFolder(target)
    dst.images.mkdir(parents=True)
    dst.labels.mkdir()
    for row in kept.itertuples(index=False):
        src = CellViTLayoutFolder(row.source)
        link_patch_file(src.image(row.name), dst.image(row.name))
        link_patch_file(src.label(row.name), dst.label(row.name))
    kept[["Image", *classes]].to_csv(dst.cell_count, index=False)
    pd.DataFrame({"img": kept["Image"], "type": kept["tissue"]}).to_csv(dst.types, index=False)
    kept[["Image", "split", "slide_id", "unit"]].rename(columns={"Image": "img"}).to_csv(dst.splits, index=False)
    per_split = kept.groupby("split")[list(classes)].sum().reindex(list(SPLITS)).fillna(0).astype(int)
    weights = class_weights(per_split.loc["train"].to_numpy())
    dst.class_weights.write_text(json.dumps(
        {"classes": ["background", *classes], "weights": [round(float(w), 6) for w in weights]}, indent=2))
    return {
        "patches": {s: int((kept["split"] == s).sum()) for s in SPLITS},
        "nuclei_per_class": {s: per_split.loc[s].to_dict() for s in SPLITS},
        "patches_per_tissue": {s: kept[kept["split"] == s]["tissue"].value_counts().to_dict() for s in SPLITS},
        "missing_classes": {s: [c for c in classes if per_split.loc[s, c] == 0 and per_split[c].sum() > 0]
                            for s in SPLITS},
        "class_weights": dict(zip(["background", *classes], [round(float(w), 4) for w in weights], strict=True)),
    }
