"""The realistic world: spillover, doublets, ambient RNA, batch shifts, and atlases that miss and rename labels."""

import json

import anndata as ad
import numpy as np
import polars as pl
import pytest
from scipy.spatial import cKDTree

from sthelar_platform.annotation import references
from sthelar_platform.core.config import WorldExpression, load_categories, load_config, load_synthetic
from sthelar_platform.core.errors import InputError
from sthelar_platform.registration import transform as reg
from sthelar_platform.registration._level0 import refine_on_level0
from sthelar_platform.synth import synthesize_cohort, true_he_to_um
from sthelar_platform.synth._expression import Programs, sample_panel_counts, slide_mixing


def _two_labels() -> Programs:
    """Label A expresses gene 0, label B gene 1; gene 2 is a low background."""
    mean = np.array([[10.0, 0.0, 1.0], [0.0, 10.0, 1.0]])
    return Programs(genes=("GA", "GB", "GC"), n_panel=3, labels=("A", "B"), label_category={"A": "A", "B": "B"}, mean=mean)


def _checkerboard(n_side: int = 40) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y, x = np.divmod(np.arange(n_side * n_side), n_side)
    labels = np.where((x + y) % 2 == 0, "A", "B")
    return x * 10.0, y * 10.0, labels


def test_the_simple_world_mixes_nothing():
    x, y, _ = _checkerboard(4)
    assert slide_mixing(WorldExpression(), x, y, 3, np.random.default_rng(0)) is None


def test_spillover_ambient_and_doublets_move_the_expected_share_of_transcripts():
    x, y, labels = _checkerboard()
    world = WorldExpression(spillover_fraction=0.2, spillover_neighbours=4, ambient_fraction=0.1, doublet_fraction=0.1)
    mixing = slide_mixing(world, x, y, 3, np.random.default_rng(0))
    counts = sample_panel_counts(_two_labels(), labels, 500, np.zeros(len(x), bool), np.random.default_rng(1), mixing)
    counts = counts.toarray()
    single_a = (labels == "A") & ~mixing.doublet
    # an A cell's four nearest cells are all B: 20 % spillover + half of the 10 % ambient come from B
    foreign = counts[single_a, 1].sum() / counts[single_a, :2].sum()
    assert foreign == pytest.approx(0.2 + 0.05, abs=0.02)
    assert 0.06 < mixing.doublet.mean() < 0.14
    doublet_a = (labels == "A") & mixing.doublet  # merged with a B neighbour: about half of it is B
    assert counts[doublet_a, 1].sum() / counts[doublet_a, :2].sum() == pytest.approx(0.5 * 0.25 + 0.5, abs=0.03)
    assert counts[doublet_a].sum(1).mean() / counts[single_a].sum(1).mean() == pytest.approx(1.7, rel=0.1)


def test_a_slide_batch_shift_changes_genes_not_totals():
    x, y, labels = _checkerboard(20)
    mixing = slide_mixing(WorldExpression(slide_batch_sd=0.5), x, y, 3, np.random.default_rng(2))
    shifted = sample_panel_counts(_two_labels(), labels, 500, np.zeros(len(x), bool), np.random.default_rng(1), mixing)
    plain = sample_panel_counts(_two_labels(), labels, 500, np.zeros(len(x), bool), np.random.default_rng(1))
    assert shifted.sum() == pytest.approx(plain.sum(), rel=0.02)
    assert not np.allclose(np.asarray(shifted[:, 2].sum()) / shifted.sum(), np.asarray(plain[:, 2].sum()) / plain.sum(),
                           rtol=0.05)


def test_a_realistic_cohort_has_doublets_and_atlases_that_miss_and_rename_labels(tmp_path):
    cfg = load_synthetic()
    manifest = synthesize_cohort(tmp_path, "tiny", cfg, load_categories(), world="realistic")
    assert "world: realistic" in manifest.read_text()
    truth = pl.read_parquet(tmp_path / "slides" / "tiny" / "truth" / "cells.parquet")
    assert 0 < truth["doublet"].mean() < 0.1
    atlas = ad.read_h5ad(tmp_path / "references" / "breast.h5ad")
    names = set(atlas.obs["cell_type"].astype(str))
    assert "CD4-positive, alpha-beta T cell" in names and "CD4 T cell" not in names
    assert "Neural progenitor" not in names and "Stem_like" in set(truth["category"])  # on the slide, not the atlas
    # the platform reads the renamed atlas: every Cell Ontology name has its category
    acfg = load_config("annotation").references
    ref = references.load_reference(references.ReferenceSpec("breast", tmp_path / "references" / "breast.h5ad",
                                                             "cell_type"), load_categories(), acfg)
    assert ref.obs.loc[ref.obs["label"] == "macrophage", "category"].unique().tolist() == ["Myeloid"]
    # the H&E section is deformed: the true mapping (affine + deformation) puts H&E nuclei on their cells
    slide = tmp_path / "slides" / "tiny"
    assert (slide / "truth" / "deformation.json").exists()
    he = next((slide / "he").glob("*.ome.tif"))
    he_pts, _ = refine_on_level0(he, reg.detect_he_nuclei(he), cfg.he_pixel_size_um)  # as registration measures them
    xen = cKDTree(truth.filter(pl.col("has_nucleus")).select("x_um", "y_um").to_numpy())
    t = json.loads((slide / "truth" / "transform.json").read_text())
    affine_um = reg.apply(np.diag([0.2125, 0.2125, 1.0]) @ np.array(t["he_to_morphology"]), he_pts)
    true_um = true_he_to_um(slide / "truth")(he_pts)
    assert np.median(xen.query(true_um)[0]) < 0.8 < np.median(xen.query(affine_um)[0])
    with pytest.raises(InputError, match="unknown synthetic world 'dream'"):
        synthesize_cohort(tmp_path / "other", "tiny", cfg, load_categories(), world="dream")


def test_atlas_labels_match_up_to_case_spaces_and_underscores():
    mapping = {"Macrophage": "Myeloid", "CD4 T cell": "T_NK"}
    got = references.categories_of({"macrophage", "CD4_T  cell", "Neuron"}, mapping)
    assert got == {"macrophage": "Myeloid", "CD4_T  cell": "T_NK"}
