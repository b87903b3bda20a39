"""Bundles of other Xenium generations go through the Dagster assets: ingest, registration, counts,
annotation and patches."""

import numpy as np
import polars as pl
import pytest
from dagster import DagsterInstance, materialize

import sthelar_definitions
from sthelar_platform.core.config import load_categories, load_synthetic
from sthelar_platform.ingest.manifest import SlideCatalog, SlideSpec
from sthelar_platform.synth import synthesize_reference, synthesize_slide
from sthelar_platform.tiling.patches import load_labels

pytestmark = pytest.mark.slow  # every Xenium generation taken through the slide pipeline
STAGES = ("xenium_slide", "he_image", "he_registration", "nucleus_counts", "cell_counts", "tangram_labels",
          "clusters", "cell_types", "patches_40x", "patches_20x")
ASSETS = [a for a in sthelar_definitions.ALL_ASSETS if a.key.to_user_string() in STAGES]
CASES = {  # slide id -> flavour, quirks, the reader path the asset metadata must name
    "xoa19": ("1.9", (), "spatialdata-io"),
    "xoa31": ("3.1", ("bytes", "blank"), "spatialdata-io"),
    "ranger": ("ranger", ("macos",), "spatialdata-io"),
    "rnd": (None, ("rnd",), "bundle files"),
    "xoa40": ("4.0", (), "spatialdata-io"),
    "xoa20": ("2.0", (), "spatialdata-io"),  # four morphology files, cells with two nuclei
    "proseg": ("3.1", ("foreign_ids",), "bundle files"),  # another segmenter's cell ids
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("generations")
    atlas = synthesize_reference(tmp / "references" / "breast.h5ad", "breast", 1200, 0, load_synthetic())
    specs = []
    for slide_id, (xoa, quirks, _) in CASES.items():
        s = synthesize_slide(tmp / "landing", slide_id, "breast", "tiny", 0, load_synthetic(), load_categories(),
                             xoa=xoa, quirks=quirks)
        specs.append(SlideSpec(slide_id=slide_id, tissue="breast", xenium_dir=s.xenium_dir, he_image=s.he_image,
                               alignment_csv=s.alignment_csv, reference=atlas, synthetic=True))
    home = tmp / "home"
    SlideCatalog(home / "catalog.yaml").add(specs)
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("slides", list(CASES))
    resources = sthelar_definitions.build_resources(str(home))
    out = {s: materialize(ASSETS, partition_key=s, instance=instance, resources=resources,
                          raise_on_error=False) for s in CASES}
    return {**out, "_home": home}


@pytest.mark.parametrize("slide_id", list(CASES))
def test_generation_goes_through_ingest_registration_counts_and_patches(runs, slide_id):
    result = runs[slide_id]
    assert result.success, [str(e.event_specific_data.error) for e in result.all_events
                            if e.event_type_value == "STEP_FAILURE"]
    mats = {m.asset_key.to_user_string(): m.materialization.metadata for m in result.get_asset_materialization_events()}
    assert set(mats) == set(STAGES)
    xoa, _, reader = CASES[slide_id]
    md = mats["xenium_slide"]
    assert md["reader"].value.startswith(reader)
    expected = {"1.9": "XOA 1.x", "3.1": "XOA 3.x", "4.0": "XOA 4.x", "ranger": "Xenium Ranger", "2.0": "XOA 2.x",
                None: "XOA 2.x"}[xoa]
    assert expected in md["generation"].value
    checks = {e.event_specific_data.check_name: e.event_specific_data.passed for e in result.all_events
              if e.event_type_value == "ASSET_CHECK_EVALUATION"}
    # every check of these assets ran in its asset's step and passed (the CSV fits, the scan has its pixel size)
    assert checks == {"registration_quality": True, "alignment_csv_agreement": True, "he_pixel_size_known": True,
                      "counts_valid": True, "annotation_quality": True}
    assert mats["patches_40x"]["n_patches"].value > 0 and mats["patches_20x"]["n_patches"].value > 0
    if slide_id == "xoa20":
        assert md["n_multinucleate_cells"].value >= 3
        assert mats["patches_40x"]["n_multipart_nuclei"].value == md["n_multinucleate_cells"].value
    if slide_id == "proseg":  # hashed mask integers reach the patches' cell-id maps
        from sthelar_platform.core.ids import mask_ints

        home = runs["_home"]
        labels = pl.read_parquet(home / "warehouse" / "cell_types" / slide_id / "cell_labels.parquet")
        ints = set(mask_ints(labels["cell_id"].to_numpy())[0].tolist())
        patch_dir = home / "warehouse" / "patches_40x" / slide_id / "labels"
        seen = set()
        for npz in sorted(patch_dir.glob("*.npz"))[:20]:
            seen |= set(np.unique(load_labels(npz)["cell_id_map"]).tolist()) - {0}
        assert seen and seen <= ints
