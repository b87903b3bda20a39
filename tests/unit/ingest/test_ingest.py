"""Ingest of a Xenium bundle and an H&E image, and each bad input it must reject clearly."""

import pytest

from sthelar_platform.core.config import load_config
from sthelar_platform.core.errors import InputError
from sthelar_platform.ingest.he_image import ingest_he
from sthelar_platform.ingest.xenium import ingest_xenium

PIPELINE = load_config("pipeline")
MAGS = PIPELINE.he_image.magnification_um_per_px


def test_ingest_persists_what_later_stages_need(tiny_slide, tmp_path):
    import polars as pl

    s = ingest_xenium(tiny_slide / "xenium", tmp_path, PIPELINE.ingest)
    names = {p.name for p in tmp_path.iterdir()}
    assert names >= {"expression.h5ad", "cells.parquet", "nucleus_boundaries.parquet", "cell_boundaries.parquet",
                     "transcripts.parquet", "thumbnail_dapi.png", "summary.json"}
    raw = pl.scan_parquet(tiny_slide / "xenium" / "transcripts.parquet").select(pl.len()).collect().item()
    assert s.n_transcripts == raw and s.n_controls > 0 and s.n_unassigned > 0
    cells = pl.read_parquet(tmp_path / "cells.parquet")
    assert cells.height == s.n_cells and cells["mask_id"].min() > 0 and cells["cell_id"].is_unique().all()
    verts = pl.read_parquet(tmp_path / "nucleus_boundaries.parquet")
    assert verts["label_id"].n_unique() == s.n_nuclei


def _expect(exc_info, file_part, problem):
    msg = str(exc_info.value)
    assert file_part in msg and problem in msg and "Fix:" in msg, msg


def test_missing_experiment_xenium(slide_copy, tmp_path):
    (slide_copy / "xenium" / "experiment.xenium").unlink()
    with pytest.raises(InputError) as e:
        ingest_xenium(slide_copy / "xenium", tmp_path / "o", PIPELINE.ingest)
    _expect(e, "experiment.xenium", "required Xenium file missing")


def test_truncated_parquet(slide_copy, tmp_path):
    p = slide_copy / "xenium" / "cells.parquet"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(InputError) as e:
        ingest_xenium(slide_copy / "xenium", tmp_path / "o", PIPELINE.ingest)
    _expect(e, "cells.parquet", "not a readable parquet file")


def test_transcripts_missing_columns(slide_copy, tmp_path):
    import polars as pl

    p = slide_copy / "xenium" / "transcripts.parquet"
    pl.read_parquet(p).drop("feature_name").write_parquet(p)
    with pytest.raises(InputError) as e:
        ingest_xenium(slide_copy / "xenium", tmp_path / "o", PIPELINE.ingest)
    _expect(e, "transcripts.parquet", "missing column(s) feature_name")


def test_corrupt_experiment_json(slide_copy, tmp_path):
    (slide_copy / "xenium" / "experiment.xenium").write_text("{not json")
    with pytest.raises(InputError) as e:
        ingest_xenium(slide_copy / "xenium", tmp_path / "o", PIPELINE.ingest)
    _expect(e, "experiment.xenium", "not a valid experiment.xenium")


def test_he_that_is_not_an_image(tmp_path):
    fake = tmp_path / "he_image.ome.tif"
    fake.write_text("this is a text file, not a TIFF")
    with pytest.raises(InputError) as e:
        ingest_he(fake, tmp_path, MAGS)
    _expect(e, "he_image.ome.tif", "not a readable TIFF")


def test_he_that_is_greyscale(tmp_path):
    import numpy as np
    import tifffile

    p = tmp_path / "grey.tif"
    tifffile.imwrite(p, np.zeros((512, 512), np.uint8))
    with pytest.raises(InputError) as e:
        ingest_he(p, tmp_path, MAGS)
    _expect(e, "grey.tif", "not an RGB image")


def test_he_ingest_reports_magnification(tiny_slide, tmp_path):
    s = ingest_he(tiny_slide / "he" / "tiny_he_image.ome.tif", tmp_path, MAGS)
    assert s.magnification == "40x" and s.n_levels >= 2 and (tmp_path / "thumbnail_he.png").exists()
