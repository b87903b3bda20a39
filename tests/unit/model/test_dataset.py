"""Leakage-free, stratified splits of the exported patches."""

import numpy as np
import pandas as pd
import pytest

from sthelar_platform.core.config import load_config
from sthelar_platform.core.errors import InputError
from sthelar_platform.model.dataset import assign_units, class_weights, split_patches

CLASSES = ("A", "B", "Rare")
CFG = load_config("training").dataset.model_copy(update={"split": "block", "block_px": 768, "seed": 0,
                                                         "fractions": {"train": 0.6, "val": 0.2, "test": 0.2}})


def _cfg(**update):
    return CFG.model_copy(update=update)


def _grid(slides=("s1", "s2"), n=24, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for s in slides:
        for r in range(n):
            for c in range(n):
                rows.append({"slide_id": s, "name": f"{s}_{r}_{c}", "x0": c * 192, "y0": r * 192,
                             "A": int(rng.integers(0, 20)), "B": int(rng.integers(0, 5)),
                             "Rare": int(rng.random() < 0.03)})
    return pd.DataFrame(rows)


def test_block_split_shares_no_pixel_between_splits():
    frame = split_patches(_grid(), CLASSES, CFG)
    kept = frame[frame["split"] != "dropped"]
    assert set(kept["split"]) == {"train", "val", "test"} and (frame["split"] == "dropped").any()
    for slide, g in kept.groupby("slide_id"):
        owner = {}
        for p in g.itertuples():
            for y in range(p.y0, p.y0 + 256, 64):          # sample the footprint every 64 px
                for x in range(p.x0, p.x0 + 256, 64):
                    assert owner.setdefault((y, x), p.split) == p.split, (slide, p.name)


def test_rare_class_reaches_every_split_and_fractions_hold():
    frame = split_patches(_grid(seed=3), CLASSES, CFG)
    kept = frame[frame["split"] != "dropped"]
    rare = kept.groupby("split")["Rare"].sum()
    assert (rare.reindex(["train", "val", "test"]).fillna(0) > 0).all(), rare
    share = kept["split"].value_counts(normalize=True)
    assert 0.45 < share["train"] < 0.75 and share["val"] > 0.1 and share["test"] > 0.1


def test_split_is_deterministic_and_slide_split_needs_three_slides():
    a, b = split_patches(_grid(), CLASSES, CFG), split_patches(_grid(), CLASSES, CFG)
    assert a["split"].tolist() == b["split"].tolist()
    with pytest.raises(InputError, match="needs at least 3 slides"):
        split_patches(_grid(), CLASSES, _cfg(split="slide"))
    by_slide = split_patches(_grid(("s1", "s2", "s3", "s4", "s5"), n=6), CLASSES,
                             _cfg(split="slide", test_slides=["s2"]))
    assert by_slide.groupby("slide_id")["split"].nunique().max() == 1      # whole slides only
    assert set(by_slide.loc[by_slide["slide_id"] == "s2", "split"]) == {"test"}


def test_assignment_puts_the_only_rare_units_in_different_splits():
    counts = pd.DataFrame({"A": [10] * 10, "Rare": [1, 1, 1] + [0] * 7}, index=[f"u{i}" for i in range(10)])
    out = assign_units(counts, {"train": 0.6, "val": 0.2, "test": 0.2})
    assert {out["u0"], out["u1"], out["u2"]} == {"train", "val", "test"}


def test_class_weights_favour_rare_classes():
    w = class_weights(np.array([100, 10, 0]))
    assert w[0] == 1.0 and w[2] > w[1] and w[3] == 0


def test_patient_split_keeps_a_patients_slides_together():
    slides = ("a1", "a2", "a3", "b1", "c1", "d1", "e1")
    patients = {"a1": "P1", "a2": "P1", "a3": "P1", "b1": "P2", "c1": "P3", "d1": "P4"}  # e1: its own patient
    frame = split_patches(_grid(slides, n=6), CLASSES, _cfg(split="patient", test_slides=["a2"]),
                          patients=patients)
    assert set(frame.loc[frame["slide_id"].isin(["a1", "a2", "a3"]), "split"]) == {"test"}  # a2's patient, whole
    assert frame.groupby("unit")["split"].nunique().max() == 1 and set(frame["split"]) == {"train", "val", "test"}
    assert frame.loc[frame["slide_id"] == "e1", "unit"].iloc[0] == "slide:e1"
    with pytest.raises(InputError, match="needs at least 3 patients"):
        split_patches(_grid(("a1", "a2", "b1"), n=4), CLASSES, _cfg(split="patient"), patients=patients)
