"""Bad reference atlases and damaged upstream tables: the annotation stages refuse each with one line;
earlier outputs stay."""

import anndata as ad
import numpy as np
import pytest
from case_homes import assert_refused, outputs_digest, replace_file, the_one_error, truncate
from scipy import sparse


def _atlas(change):
    def mutate(case):
        path = case.spec.reference
        atlas = change(ad.read_h5ad(path))
        path.unlink()  # the file is hard-linked to the good home's input: never write through it
        atlas.write_h5ad(path)
        return path
    return mutate


def _renamed_genes(a):
    a.var_names = [f"UNRELATED{i}" for i in range(a.n_vars)]
    return a


def _log_normalized(a):
    a.X = sparse.csr_matrix(np.log1p(a.X.toarray()).astype(np.float32))
    return a


def _with_nan(a):
    x = a.X.toarray().astype(np.float32)
    x[0, 0] = np.nan
    a.X = sparse.csr_matrix(x)
    return a


def _unknown_labels(a):
    a.obs["cell_type"] = a.obs["cell_type"].astype(str)
    a.obs.loc[a.obs_names[:20], "cell_type"] = "Alien_cell"
    return a


ATLAS_CASES = {
    "atlas_zero_shared_genes": (_atlas(_renamed_genes), "genes shared"),
    "atlas_truncated": (lambda c: truncate(c.spec.reference, 0.5), "not a readable .h5ad"),
    "atlas_not_h5ad": (lambda c: replace_file(c.spec.reference, "cell_type,gene\nT,CD3E\n"), "not a readable .h5ad"),
    "atlas_no_label_column": (_atlas(lambda a: a[:, :].copy() if a.obs.drop(columns=["cell_type"], inplace=True) else a),
                              "no label column"),
    "atlas_log_normalized": (_atlas(_log_normalized), "non-integer"),
    "atlas_nan_counts": (_atlas(_with_nan), "non-finite"),
    "atlas_empty": (_atlas(lambda a: a[:0].copy()), "reference is empty"),
    "atlas_unknown_labels": (_atlas(_unknown_labels), "labels without a category"),
    "atlas_missing": (lambda c: c.spec.reference.unlink() or c.spec.reference, "not found"),
}


@pytest.mark.parametrize("name", sorted(ATLAS_CASES))
def test_bad_reference_atlas_is_refused_and_nothing_is_lost(case, name):
    mutate, problem = ATLAS_CASES[name]
    before = outputs_digest(case.home)
    mutate(case)
    error = the_one_error(case, "tangram_labels")
    assert_refused(error, case.spec.reference, problem, before, case.home)


def test_damaged_ingested_transcripts_stop_counting_with_their_name(case):
    before = outputs_digest(case.home)
    target = truncate(case.output("xenium_slide") / "transcripts.parquet", 0.6)
    error = the_one_error(case, "cell_counts")
    assert_refused(error, target, "transcripts", before, case.home, changed=("warehouse/xenium_slide/",))


@pytest.mark.parametrize("text,problem", [("clusters: {0: [unclosed\n", "not valid YAML"),
                                          ("clusters: {'0': Epithelial}\n", "without `reviewed_by`"),
                                          ("reviewed_by: dr_x\nclusters: {'0': Dragon}\n", "unknown categories")])
def test_bad_reviewed_override_stops_labelling_with_its_name(case, text, problem):
    before = outputs_digest(case.home)
    override = case.config_dir / "overrides" / "tiny.yaml"
    override.parent.mkdir()
    override.write_text(text)
    error = the_one_error(case, "cell_types")
    assert_refused(error, override, problem, before, case.home)


def test_tangram_output_without_the_atlas_centroids_stops_the_cross_check_with_its_name(case):
    """cell_types reads the atlas' centroids from tangram_labels (an output written before they existed lacks them)."""
    before = outputs_digest(case.home)
    target = case.output("tangram_labels") / "reference_centroids.parquet"
    target.unlink()
    error = the_one_error(case, "cell_types")
    assert_refused(error, target, "tangram_labels", before, case.home, changed=("warehouse/tangram_labels/",))
