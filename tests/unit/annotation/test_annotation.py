"""The accept / override rule, overrides, and the annotation stages' bad inputs."""

import anndata as ad
import numpy as np
import pandas as pd
import polars as pl
import pytest
from scipy import sparse

from sthelar_platform.annotation import counts, references
from sthelar_platform.annotation import rule as annotation
from sthelar_platform.annotation import tangram as tangram_transfer
from sthelar_platform.annotation.clustering import write_clusters
from sthelar_platform.annotation.tangram import write_tangram_labels
from sthelar_platform.core.config import load_categories, load_config
from sthelar_platform.core.errors import InputError

CFG = load_config("annotation")
CATS = load_categories()


def _cells(rows):
    """rows: (cell_id, cluster, tangram_category, nucleus_category, n_transcripts)"""
    df = pd.DataFrame(rows, columns=["cell_id", "cluster", "tangram_category", "tangram_nucleus_category", "n_transcripts"])
    df["tangram_label"] = df["tangram_category"]
    return df.set_index("cell_id")


def _probs(cells):
    cats = sorted(set(cells["tangram_category"]) | {"Epithelial", "T_NK", "Myeloid"})
    return pd.DataFrame([[0.9 if c == t else 0.1 / (len(cats) - 1) for c in cats] for t in cells["tangram_category"]],
                        index=cells.index, columns=cats)


def test_rule_accepts_tangram_where_markers_agree_and_markers_win_otherwise():
    cells = _cells([("a", "0", "Epithelial", "Epithelial", 50), ("b", "0", "Epithelial", "Epithelial", 50),
                    ("c", "0", "T_NK", "Epithelial", 50),  # agreeing cluster: keeps its own Tangram label
                    ("d", "1", "T_NK", "T_NK", 50), ("e", "1", "T_NK", "T_NK", 50), ("f", "1", "Myeloid", "T_NK", 50),
                    ("g", "2", "Myeloid", "Myeloid", 50), ("h", "2", "Myeloid", "Myeloid", 50)])
    markers = pd.Series({"0": "Epithelial", "1": "Myeloid", "2": "Unknown"})
    review = annotation.decide_clusters(cells, markers, 0.4).set_index("cluster")
    assert review.loc["0", "decision"] == "agree" and review.loc["1", "decision"] == "marker_override"
    assert review.loc["2", "decision"] == "tangram_no_marker_evidence" and review.loc["2", "label"] == "Myeloid"
    labels = annotation.label_cells(cells, review.reset_index(), _probs(cells), {}, 10, CATS)
    assert labels.loc["c", "category"] == "T_NK" and labels.loc["a", "category"] == "Epithelial"
    assert (labels.loc[["d", "e", "f"], "category"] == "Myeloid").all()
    assert labels.loc["d", "label_source"] == "cluster_markers"
    # cluster 1: 2 of 3 cells' Tangram label disagrees with Myeloid (67 % > 40 %): flagged
    assert review.loc["1", "flagged"] and "disagree" in review.loc["1", "flag_reasons"]
    assert not review.loc["0", "flagged"] and labels.loc["a", "confidence"] == pytest.approx(0.9 * 2 / 3)
    assert labels.loc["a", "detailed_class"] == "Epithelial" and labels.loc["d", "grouped_class"] == "Immune"


def test_flags_nucleus_cell_disagreement_and_unknown_label():
    cells = _cells([("a", "0", "Epithelial", "T_NK", 50), ("b", "0", "Epithelial", "T_NK", 50),
                    ("c", "1", "Unknown", "Unknown", 50)])
    review = annotation.decide_clusters(cells, pd.Series({"0": "Epithelial", "1": "Unknown"}), 0.4).set_index("cluster")
    assert "nucleus-based label T_NK" in review.loc["0", "flag_reasons"]
    assert "top label Unknown" in review.loc["1", "flag_reasons"]


def test_less10_and_reviewed_overrides_come_last(tmp_path):
    cells = _cells([("a", "0", "Epithelial", None, 50), ("b", "0", "Epithelial", None, 8), ("c", "1", "T_NK", None, 40)])
    review = annotation.decide_clusters(cells, pd.Series({"0": "Epithelial", "1": "T_NK"}), 0.4)
    (tmp_path / "s1.yaml").write_text("reviewed_by: pathologist A\nclusters: {'1': Myeloid}\ncells: {a: Fibroblast_Myofibroblast}\n")
    ov = annotation.load_overrides("s1", tmp_path, CATS)
    labels = annotation.label_cells(cells, review, _probs(cells), ov, 10, CATS)
    assert labels.loc["b", "category"] == "Less10" and labels.loc["b", "confidence"] == 0
    assert labels.loc["c", "category"] == "Myeloid" and labels.loc["a", "category"] == "Fibroblast_Myofibroblast"
    assert labels.loc["a", "label_source"] == "override" and labels.loc["a", "confidence"] == 1.0
    (tmp_path / "s2.yaml").write_text("clusters: {'1': Myeloid}\n")
    with pytest.raises(InputError, match="reviewed_by"):
        annotation.load_overrides("s2", tmp_path, CATS)
    (tmp_path / "s3.yaml").write_text("reviewed_by: x\ncells: {a: Dragon}\n")
    with pytest.raises(InputError, match="unknown categories"):
        annotation.load_overrides("s3", tmp_path, CATS)


def _reference(tmp_path, x, obs=None, genes=None, name="ref.h5ad"):
    genes = genes or [f"G{i}" for i in range(x.shape[1])]
    obs = obs if obs is not None else pd.DataFrame({"cell_type": ["CD4 T cell"] * (x.shape[0] // 2)
                                                    + ["Macrophage"] * (x.shape[0] - x.shape[0] // 2)})
    a = ad.AnnData(X=x, obs=obs.set_index(pd.Index([f"c{i}" for i in range(x.shape[0])])),
                   var=pd.DataFrame(index=genes))
    a.write_h5ad(tmp_path / name)
    return references.ReferenceSpec("breast", tmp_path / name, "cell_type")


def test_reference_without_label_column(tmp_path):
    spec = _reference(tmp_path, np.ones((20, 5)), obs=pd.DataFrame({"celltype": ["x"] * 20}))
    with pytest.raises(InputError, match="no label column 'cell_type'") as e:
        references.load_reference(spec, CATS, CFG.references)
    assert "ref.h5ad" in str(e.value) and "Fix:" in str(e.value)


@pytest.mark.parametrize(("x", "problem"), [
    (np.full((20, 5), -1.0), "negative"),
    (np.full((20, 5), 0.5), "non-integer"),
    (sparse.csr_matrix(np.full((20, 5), 2.3)), "non-integer"),
])
def test_reference_that_is_not_counts(tmp_path, x, problem):
    with pytest.raises(InputError, match=problem):
        references.load_reference(_reference(tmp_path, x), CATS, CFG.references)


def test_reference_labels_must_map_to_categories(tmp_path):
    spec = _reference(tmp_path, np.ones((20, 5)), obs=pd.DataFrame({"cell_type": ["Martian cell"] * 20}))
    with pytest.raises(InputError, match="labels without a category.*Martian"):
        references.load_reference(spec, CATS, CFG.references)


def test_too_few_shared_genes(tmp_path):
    ref = references.load_reference(_reference(tmp_path, np.ones((20, 5), np.int32)), CATS, CFG.references)
    query = ad.AnnData(X=np.ones((4, 3)), var=pd.DataFrame(index=["G0", "G1", "X"]))
    with pytest.raises(InputError, match="only 2 genes shared"):
        tangram_transfer.shared_genes(query, ref, 30, "ref.h5ad")


def test_slide_with_zero_cells():
    empty = pl.LazyFrame(schema={"cell_id": pl.String, "feature_name": pl.String, "in_nucleus": pl.Boolean})
    with pytest.raises(ValueError, match="at least one cell"):  # the stage names the cells file first (bad_inputs)
        counts.count_tables(empty, [], ["A"])


def test_every_cell_under_ten_transcripts(tmp_path):
    table = ad.AnnData(X=sparse.csr_matrix(np.ones((30, 40), np.int32) * (np.arange(40) < 5)),
                       obs=pd.DataFrame({"n_transcripts": np.full(30, 5)}, index=[f"c{i}" for i in range(30)]),
                       var=pd.DataFrame(index=[f"G{i}" for i in range(40)]))
    (tmp_path / "cc").mkdir()
    table.write_h5ad(tmp_path / "cc" / "cell.h5ad")
    spec = _reference(tmp_path, np.ones((20, 40), np.int32))
    with pytest.raises(InputError, match="every cell has at most 10 transcripts"):
        write_tangram_labels(tmp_path / "cc", tmp_path / "nc", spec, tmp_path, CFG, CATS)
    with pytest.raises(InputError, match="only 0 cells have more than 10"):
        write_clusters(tmp_path / "cc", tmp_path, CFG, 10)


def test_labels_at_points_reads_a_raster_by_bands():
    labels = np.zeros((100, 80), np.int32)
    labels[10:20, 30:40] = 7
    labels[90:, :5] = 3
    x = np.array([35.2, 2.0, 79.9, -1, 50])
    y = np.array([15.7, 95.5, 99.9, 10, 150])
    assert labels_at(x, y, labels).tolist() == [7, 3, 0, 0, 0]


def labels_at(x, y, labels):
    return counts.labels_at_points(x, y, labels, band=16)


def test_weak_dissent_inside_an_agreeing_cluster_takes_the_cluster_label():
    cells = _cells([("a", "0", "Epithelial", None, 50), ("b", "0", "Epithelial", None, 50),
                    ("c", "0", "T_NK", None, 50), ("d", "0", "Myeloid", None, 50)])
    review = annotation.decide_clusters(cells, pd.Series({"0": "Epithelial"}), 0.6)
    probs = _probs(cells)
    probs.loc["d", "Myeloid"] = 0.5  # unsure: follows the cluster
    labels = annotation.label_cells(cells, review, probs, {}, 10, CATS, keep_own_min_probability=0.7)
    assert labels.loc["c", "category"] == "T_NK" and labels.loc["c", "label_source"] == "tangram"  # p = 0.9
    assert labels.loc["d", "category"] == "Epithelial" and labels.loc["d", "label_source"] == "cluster_consensus"


def test_tangram_fits_a_large_panel_on_the_atlas_markers():
    rng = np.random.default_rng(3)
    n_genes, labels = 1500, np.repeat(["A", "B", "C"], 60)
    mu = np.full((len(labels), n_genes), 0.2)
    planted = {"A": [10, 11], "B": [500, 501], "C": [1400, 1401]}
    for lab, cols in planted.items():
        mu[np.ix_(labels == lab, cols)] = 20
    genes = [f"G{i:04d}" for i in range(n_genes)]
    ref = ad.AnnData(X=sparse.csr_matrix(rng.poisson(mu).astype(np.float32)), obs=pd.DataFrame({"label": labels}),
                     var=pd.DataFrame(index=genes))
    ref.obs_names = [f"r{i}" for i in range(ref.n_obs)]
    cfg = CFG.tangram.model_copy(update={"markers_above_genes": 1000, "markers_per_label": 20})
    fit = tangram_transfer.training_genes(ref, genes, cfg)
    assert len(fit) <= 60 and {genes[c] for cols in planted.values() for c in cols} <= set(fit)
    # a panel at or under the limit fits on every shared gene
    assert tangram_transfer.training_genes(ref, genes[:1000], cfg) == genes[:1000]
