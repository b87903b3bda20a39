"""Whole-slide prediction helpers: every point is owned by exactly one overlapping tile; the overlap
link and the per-class agreement by hand."""

import numpy as np
import pandas as pd

from sthelar_platform.model.predictions import _overlaps, agreement_by_category, owned_by_tile


def test_each_point_of_an_overlapping_grid_is_owned_by_exactly_one_tile():
    size, stride = 256, 192
    tiles = {(x, y) for x in range(0, 4 * stride, stride) for y in range(0, 3 * stride, stride)}
    tiles.discard((stride, stride))  # a hole (a tile without tissue) must not orphan its points
    rng = np.random.default_rng(0)
    gx, gy = rng.uniform(0, 3 * stride + size, 5000), rng.uniform(0, 2 * stride + size, 5000)
    owners = np.zeros(len(gx), int)
    for x0, y0 in tiles:
        inside = (gx >= x0 - 0.5) & (gx < x0 + size - 0.5) & (gy >= y0 - 0.5) & (gy < y0 + size - 0.5)
        mine = owned_by_tile(gx, gy, x0, y0, tiles, stride, size) & inside
        owners += mine
    covered = np.zeros(len(gx), bool)
    for x0, y0 in tiles:
        covered |= (gx >= x0 - 0.5) & (gx < x0 + size - 0.5) & (gy >= y0 - 0.5) & (gy < y0 + size - 0.5)
    assert (owners[covered] == 1).all() and (owners[~covered] == 0).all()


def test_overlap_link_picks_the_xenium_nucleus_overlapping_most():
    inst = np.zeros((8, 8), np.int32)
    inst[0:4, 0:4] = 1          # predicted nucleus 1: 16 px
    inst[5:7, 5:7] = 2          # predicted nucleus 2: touches nothing
    xen = np.zeros((8, 8), np.int64)
    xen[0:4, 0:3] = 3           # 12 px overlap with nucleus 1
    xen[0:4, 3:5] = 4           # 4 px overlap
    best, overlap, area = _overlaps(inst, xen, 2)
    assert best.tolist() == [3, 0] and overlap.tolist() == [12, 0] and area.tolist() == [12, 0]


def test_agreement_by_category_by_hand():
    cells = pd.DataFrame({"xenium_cell_id": ["a", "b", "c", None],
                          "xenium_class": ["T_NK", "T_NK", "Myeloid", None],
                          "predicted_class": ["T_NK", "Myeloid", "Myeloid", "T_NK"]})
    a = agreement_by_category(cells, ("T_NK", "Myeloid", "Epithelial")).set_index("class_name")
    assert a.loc["T_NK", "precision"] == 1.0 and a.loc["T_NK", "recall"] == 0.5
    assert a.loc["Myeloid", "precision"] == 0.5 and a.loc["Myeloid", "recall"] == 1.0
    assert np.isnan(a.loc["Epithelial", "f1"]) and a.loc["T_NK", "n_predicted"] == 1  # the unlinked one is left out
