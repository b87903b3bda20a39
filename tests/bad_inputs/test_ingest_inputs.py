"""Bad Xenium bundles: the `xenium_slide` asset refuses each with one line; earlier outputs stay."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from case_homes import assert_refused, outputs_digest, replace_file, the_one_error, truncate


def _rewrite_parquet(path, change):
    table = change(pq.read_table(path))
    path.unlink()
    pq.write_table(table, path)
    return path


def _set_column(table, name, values):
    return table.set_column(table.schema.get_field_index(name), name, pa.array(values, type=table.schema.field(name).type))


def _experiment(key, value):
    def mutate(bundle):
        path = bundle / "experiment.xenium"
        spec = json.loads(path.read_text())
        spec[key] = value
        return replace_file(path, json.dumps(spec))
    return mutate


def _nan_first(column, n=5):
    def mutate(bundle, name):
        def change(t):
            v = t.column(column).to_numpy(zero_copy_only=False).astype(float).copy()
            v[:n] = np.nan
            return _set_column(t, column, v)
        return _rewrite_parquet(bundle / name, change)
    return mutate


def _duplicate_cell_ids(bundle):
    def change(t):
        ids = t.column("cell_id").to_pylist()
        ids[1] = ids[0]
        return _set_column(t, "cell_id", ids)
    return _rewrite_parquet(bundle / "cells.parquet", change)


def _drop_column(name, column):
    return lambda bundle: _rewrite_parquet(bundle / name, lambda t: t.drop_columns([column]))


def _transcripts_in_pixels(bundle):
    """x/y written in morphology pixels instead of µm (a unit slip of 1/0.2125 = 4.7x)."""
    def change(t):
        for c in ("x_location", "y_location"):
            t = _set_column(t, c, t.column(c).to_numpy() / 0.2125 + 5000)
        return t
    return _rewrite_parquet(bundle / "transcripts.parquet", change)


def _no_cells(bundle):
    return _rewrite_parquet(bundle / "cells.parquet", lambda t: t.slice(0, 0))


def _morphology_corrupt(bundle):
    for f in sorted((bundle / "morphology_focus").glob("*.ome.tif")):
        truncate(f, 0.01)
    return bundle / "morphology_focus"


def _morphology_missing(bundle):
    for f in sorted((bundle / "morphology_focus").glob("*")):
        f.unlink()
    return bundle


CASES = {
    "experiment_missing": (lambda b: (b / "experiment.xenium").unlink() or b / "experiment.xenium",
                           "experiment.xenium", "missing"),
    "experiment_truncated": (lambda b: truncate(b / "experiment.xenium", 0.3), "experiment.xenium", "not a valid"),
    "pixel_size_in_nm": (_experiment("pixel_size", 212.5), "experiment.xenium", "implausible pixel_size"),
    "pixel_size_zero": (_experiment("pixel_size", 0), "experiment.xenium", "implausible pixel_size"),
    "pixel_size_text": (_experiment("pixel_size", "0.2125 um"), "experiment.xenium", "not a valid"),
    "transcripts_truncated": (lambda b: truncate(b / "transcripts.parquet"), "transcripts.parquet", "parquet"),
    "transcripts_empty_file": (lambda b: replace_file(b / "transcripts.parquet", b""), "transcripts.parquet", "parquet"),
    "transcripts_no_x": (_drop_column("transcripts.parquet", "x_location"), "transcripts.parquet", "x_location"),
    "transcripts_nan_xy": (lambda b: _nan_first("x_location")(b, "transcripts.parquet"), "transcripts.parquet", "NaN"),
    "transcripts_in_pixels": (_transcripts_in_pixels, "transcripts.parquet", "outside"),
    "cells_duplicate_ids": (_duplicate_cell_ids, "cells.parquet", "duplicate cell id"),
    "cells_nan_centroids": (lambda b: _nan_first("x_centroid")(b, "cells.parquet"), "cells.parquet", "NaN"),
    "cells_empty_tissue": (_no_cells, "cells.parquet", "zero cells"),
    "cell_boundaries_truncated": (lambda b: truncate(b / "cell_boundaries.parquet"), "cell_boundaries.parquet", "parquet"),
    "nucleus_boundaries_no_vertices": (_drop_column("nucleus_boundaries.parquet", "vertex_x"),
                                       "nucleus_boundaries.parquet", "vertex_x"),
    "matrix_not_hdf5": (lambda b: replace_file(b / "cell_feature_matrix.h5", "not hdf5"), "cell_feature_matrix.h5", "HDF5"),
    "cells_zarr_not_zip": (lambda b: replace_file(b / "cells.zarr.zip", b"PK-not-really"), "cells.zarr.zip", "zip"),
    "morphology_truncated": (_morphology_corrupt, "morphology_focus", "truncated"),
    "morphology_missing": (_morphology_missing, "", "no morphology image"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_bundle_is_refused_and_nothing_is_lost(case, name):
    mutate, file_name, problem = CASES[name]
    before = outputs_digest(case.home)
    mutate(case.bundle)
    error = the_one_error(case, "xenium_slide")
    assert_refused(error, case.bundle / file_name if file_name else case.bundle, problem, before, case.home)
