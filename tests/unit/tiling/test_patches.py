"""Patch grid, polygon preparation and rasterization on hand-made polygons."""

import numpy as np
import polars as pl
import pytest

from sthelar_platform.core.errors import InputError
from sthelar_platform.core.imaging import PyramidInfo
from sthelar_platform.tiling.masks import load_nucleus_polygons, rasterize_region
from sthelar_platform.tiling.patches import (
    _patch_arrays,
    choose_level,
    patch_corners_um,
    patch_grid,
    tissue_fractions,
    um_to_level_px,
)

IDENTITY = np.eye(3)


def _boundaries(tmp_path, rings: dict[tuple[str, int], list[tuple[float, float]]]):
    rows = [(cid, x, y, lab) for (cid, lab), pts in rings.items() for x, y in pts]
    path = tmp_path / "nucleus_boundaries.parquet"
    pl.DataFrame(rows, schema=["cell_id", "vertex_x", "vertex_y", "label_id"], orient="row").write_parquet(path)
    return path


def _square(x0, y0, s):
    return [(x0, y0), (x0 + s, y0), (x0 + s, y0 + s), (x0, y0 + s), (x0, y0)]


def test_grid_keeps_only_full_patches_and_stable_positions():
    g = patch_grid(600, 700, 256, 64)
    assert (g["x0"] + 256 <= 700).all() and (g["y0"] + 256 <= 600).all()
    assert sorted(g["x0"].unique()) == [0, 192, 384] and sorted(g["y0"].unique()) == [0, 192]
    assert g.equals(patch_grid(600, 700, 256, 64))
    with pytest.raises(InputError, match="overlap"):
        patch_grid(600, 700, 256, 256)


def test_square_polygon_rasterizes_to_its_area(tmp_path):
    polys = load_nucleus_polygons(_boundaries(tmp_path, {("aaaaaaab-1", 1): _square(10, 10, 20)}), IDENTITY)
    region, cells = rasterize_region(polys, 0, 0, 64, 64)
    assert len(cells) == 1 and polys.cell_ids.tolist() == ["aaaaaaab-1"]
    # edges at continuous 10..30 -> pixel centres 10..29 under the -0.5 shift of um_to_level_px
    assert abs(int((region == 1).sum()) - 400) <= 2 * 20 + 1


def test_bad_polygons_are_repaired_dropped_or_drawn_in_parts(tmp_path):
    rings = {
        ("aaaaaaab-1", 1): [(0, 0), (20, 20), (20, 0), (0, 20)],          # bow-tie: self-intersecting
        ("aaaaaaac-1", 1): [(40, 40), (45, 45)],                          # two vertices: empty
        ("aaaaaaad-1", 1): [(50, 0), (55, 0), (60, 0)],                   # collinear: zero area
        ("aaaaaaae-1", 1): _square(40, 0, 8), ("aaaaaaae-1", 2): _square(40, 20, 8),  # two parts, one cell
    }
    polys = load_nucleus_polygons(_boundaries(tmp_path, rings), IDENTITY)
    assert polys.n_repaired == 1 and polys.n_empty == 2 and polys.n_multipart == 1
    assert polys.cell_ids.tolist() == ["aaaaaaab-1", "aaaaaaae-1"]
    region, cells = rasterize_region(polys, 0, 0, 64, 64)
    bowtie = region == 1 + np.flatnonzero(polys.cell_ids[cells] == "aaaaaaab-1")[0]
    assert 150 <= bowtie.sum() <= 250   # both triangles (200 px), not the even-odd hole pattern
    parts = region == 1 + np.flatnonzero(polys.cell_ids[cells] == "aaaaaaae-1")[0]
    assert parts[0:8, 40:48].all() and parts[20:28, 40:48].all()


def test_nucleus_on_a_patch_edge_is_in_both_patches_with_one_cell_id(tmp_path):
    polys = load_nucleus_polygons(_boundaries(tmp_path, {("aaaaaaab-1", 1): _square(250, 100, 12),
                                                         ("aaaaaaac-1", 1): _square(20, 20, 10)}), IDENTITY)
    region, cells = rasterize_region(polys, 0, 0, 256, 512)
    tables = {"detailed": np.array([3, 5], np.int32), "grouped": np.array([1, 2], np.int32),
              "cell_id_int": np.array([2, 3], np.int64), "detailed_n_classes": 9, "grouped_n_classes": 5}
    left, lc = _patch_arrays(region, cells, tables, 0, 0, 256)
    right, rc = _patch_arrays(region, cells, tables, 0, 192, 256)
    assert left["inst_map"].max() == 2 and right["inst_map"].max() == 1
    assert set(np.unique(right["cell_id_map"])) == {0, 2}        # the straddling nucleus keeps its cell id
    assert (right["type_map_detailed"][right["inst_map"] > 0] == 3).all()
    assert lc["detailed"].tolist() == [0, 0, 1, 0, 1, 0, 0, 0, 0] and rc["grouped"].tolist() == [1, 0, 0, 0, 0]
    assert (left["inst_map"] > 0).sum() < 100 + 144               # the cut nucleus is clipped, not redrawn


def test_missing_magnification_level_is_a_clear_error():
    one_level = PyramidInfo(path="he.tif", level_shapes=[(4000, 4000, 3)], dtype="uint8", pixel_size_um=0.25, axes="YXS")
    ranges = {"40x": [0.18, 0.32], "20x": [0.36, 0.64]}
    assert choose_level(one_level, 0.25, "40x", ranges).level == 0
    with pytest.raises(InputError, match="no pyramid level at 20x.*Fix: export the H&E as a pyramidal TIFF"):
        choose_level(one_level, 0.25, "20x", ranges)
    two = PyramidInfo(path="he.tif", level_shapes=[(4000, 4000, 3), (2000, 2000, 3)], dtype="uint8",
                      pixel_size_um=0.25, axes="YXS")
    lv = choose_level(two, 0.25, "20x", ranges)
    assert (lv.level, lv.downsample, lv.um_per_px) == (1, 2.0, 0.5)


def test_tissue_fraction_and_corners():
    mask = np.zeros((100, 100), bool)
    mask[:, :50] = True
    grid = patch_grid(1000, 1000, 256, 64)
    frac = tissue_fractions(grid, mask, 10.0, 1.0, 256)
    assert frac[(grid["x0"] == 0).to_numpy()].min() == 1.0 and frac[(grid["x0"] == 576).to_numpy()].max() == 0.0
    he_to_um = np.diag([0.25, 0.25, 1.0])
    c = patch_corners_um(np.array([192]), np.array([0]), 256, 2.0, he_to_um)
    assert c[0].tolist() == [[96.0, 0.0], [224.0, 0.0], [224.0, 128.0], [96.0, 128.0]]
    m = um_to_level_px(he_to_um, 2.0)
    assert (m @ [96.0, 0.0, 1.0])[:2].tolist() == [191.5, -0.5]   # a level pixel's centre sits half a pixel in


def test_a_non_rigid_correction_moves_masks_and_corners_consistently(tmp_path):
    """Xenium µm = affine(H&E) + warp: masks go through the warp's inverse, patch corners through the warp."""
    from sthelar_platform.core.displacement import DisplacementField

    shift = DisplacementField((-100.0, -100.0), 100.0, np.full((5, 5), 2.0), np.full((5, 5), -1.0))  # 2 µm right, 1 up
    path = _boundaries(tmp_path, {("aaaaaaab-1", 1): _square(20, 20, 10)})
    plain, warped = load_nucleus_polygons(path, IDENTITY), load_nucleus_polygons(path, IDENTITY, shift)
    assert np.allclose(warped.vertices - plain.vertices, [-2.0, 1.0])
    corners = patch_corners_um(np.array([0]), np.array([0]), 16, 1.0, IDENTITY, shift)
    assert np.allclose(corners - patch_corners_um(np.array([0]), np.array([0]), 16, 1.0, IDENTITY), [2.0, -1.0])
