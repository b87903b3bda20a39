"""Damaged or missing upstream outputs: the tiling stages refuse with the file's name; earlier outputs stay."""

import shutil

import pytest
from case_homes import assert_refused, outputs_digest, the_one_error, truncate


def _truncated(stage, name):
    return lambda case: truncate(case.output(stage) / name, 0.5)


def _missing(stage):
    def mutate(case):
        shutil.rmtree(case.output(stage))
        return case.output(stage)
    return mutate


CASES = {
    # (mutation, asset run, the upstream folder that was changed, problem)
    "labels_table_truncated": (_truncated("cell_types", "cell_labels.parquet"), "patches_40x", "cell_types",
                               "not a readable parquet"),
    "nucleus_outlines_truncated": (_truncated("xenium_slide", "nucleus_boundaries.parquet"), "patches_40x",
                                   "xenium_slide", "cannot read nucleus boundaries"),
    "patch_labels_missing": (_missing("patches_40x"), "segmentation_agreement", "patches_40x", "missing output"),
    "registered_he_missing": (_missing("registered_he"), "slide_export", "registered_he", "missing output"),
    "he_copy_truncated": (_truncated("he_image", "he_image.ome.tif"), "registered_he", "he_image", "truncated"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_damaged_upstream_output_stops_the_stage_with_its_name(case, name):
    mutate, asset, upstream, problem = CASES[name]
    before = outputs_digest(case.home)
    target = mutate(case)
    error = the_one_error(case, asset)
    assert_refused(error, target, problem, before, case.home, changed=(f"warehouse/{upstream}/",))
