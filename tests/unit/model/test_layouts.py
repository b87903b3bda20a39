"""The training dataset's layouts, read back exactly as the field's trainers read them."""

import io
import zlib

import cv2
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from dataset_readers import read_cellvit_folds, read_fork, read_hf
from PIL import Image
from scipy.sparse import load_npz

from sthelar_platform.core.config import PACKAGED_CONFIG_DIR, TrainingConfig, load_categories
from sthelar_platform.core.errors import ConfigError, InputError
from sthelar_platform.core.ids import encode_cell_ids
from sthelar_platform.model.dataset import write_training_dataset
from sthelar_platform.model.layouts import STHELAR_TISSUES
from sthelar_platform.tiling.patches import load_labels, save_npz

CATS = load_categories()
PUBLISHED = {"file_name": "string", "slide_id": "string", "cell_id_map": "binary", "Dice": "float16",
             "Jaccard": "float16", "bPQ": "float16"}


def _config(**dataset):
    data = yaml.safe_load((PACKAGED_CONFIG_DIR / "training.yaml").read_text())
    data["dataset"].update({"block_px": 768, **dataset})
    return TrainingConfig.model_validate(data)


def _export(exports, slide, tissue, rng, grid=6):
    """A slide export as slide_export writes it: 40x patches on a grid and 20x ones at half the density."""
    for mag, ds, n in (("40x", 1.0, grid), ("20x", 2.0, grid // 2)):
        for grouping, g in CATS.groupings.items():
            d = exports / slide / "cellvit" / mag / grouping
            (d / "images").mkdir(parents=True)
            (d / "labels").mkdir()
            rows, counts = [], []
            for r in range(n):
                for c in range(n):
                    name = f"{slide}_{mag}_x{c * 192:06d}_y{r * 192:06d}"
                    seeded = np.random.default_rng(zlib.crc32(f"{slide}/{mag}/{r}/{c}".encode()))  # same for both groupings
                    img = seeded.integers(0, 255, (256, 256, 3), np.uint8)
                    inst = np.zeros((256, 256), np.int32)
                    kinds = seeded.integers(1, len(g.classes) + 1, 4)
                    for i in range(4):
                        y, x = 20 + 50 * i, 30 + 40 * i
                        inst[y:y + 12, x:x + 12] = i + 1
                    type_map = np.r_[0, kinds][inst].astype(np.int32)
                    cell_ints = np.r_[0, seeded.integers(1, 2**20, 4)]
                    cv2.imwrite(str(d / "images" / f"{name}.png"), img[..., ::-1])
                    save_npz(d / "labels" / f"{name}.npz", {"inst_map": inst, "type_map": type_map,
                                                              "cell_id_map": cell_ints[inst].astype(np.int64)}, 1)
                    rows.append({"patch_id": name.removeprefix(f"{slide}_"), "name": name, "row": r, "col": c,
                                 "x0": c * 192, "y0": r * 192, "tissue": tissue, "n_nuclei": 4, "downsample": ds,
                                 "dice": rng.random(), "jaccard": rng.random(),
                                 "bpq": np.nan if (r + c) % 5 == 0 else rng.random(), "flagged": False})
                    counts.append(np.bincount(kinds, minlength=len(g.classes) + 1)[1:])
            cc = pd.DataFrame(np.array(counts), columns=list(g.classes))
            cc.insert(0, "Image", [f"{row['name']}.png" for row in rows])
            cc.to_csv(d / "cell_count.csv", index=False)
            pd.DataFrame(rows).to_csv(d / "patches.csv", index=False)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("layouts")
    exports = root / "exports"
    rng = np.random.default_rng(0)
    _export(exports, "s1", "breast", rng)
    _export(exports, "skin-2", "skin", rng)
    card = write_training_dataset(exports, ["s1", "skin-2"], root / "dataset", _config(), CATS)
    return root, card


def _source(root, name, mag, grouping):
    slide = "s1" if name.startswith("s1_") else "skin-2"
    d = root / "exports" / slide / "cellvit" / mag / grouping
    return cv2.imread(str(d / "images" / f"{name}.png"))[..., ::-1], load_labels(d / "labels" / f"{name}.npz")


@pytest.mark.parametrize("mag", ["40x", "20x"])
@pytest.mark.parametrize("grouping", ["detailed", "grouped"])
def test_fork_reads_every_listed_sample_pixel_for_pixel(dataset, mag, grouping):
    root, card = dataset
    folder = root / "dataset" / "sthelar" / mag / grouping
    samples = read_fork(folder)
    index = pd.read_csv(folder / "patch_index.csv").set_index("img")
    own = pd.read_csv(root / "dataset" / mag / grouping / "splits.csv")
    assert len(samples) == len(own) == len(index) > 0
    assert card["layouts"]["sthelar"][f"{mag}/{grouping}"] == {
        f: sum(s["fold"] == f for s in samples.values()) for f in ("train", "valid", "test")}
    fold_of = {"train": "train", "valid": "val", "test": "test"}
    for img, s in samples.items():
        row = index.loc[img]
        assert s["slide_id"] == row["slide_id"].replace("-", "_")  # the fork's slide id, from the name
        assert fold_of[s["fold"]] == row["split"]
        assert s["tissue"] == {"s1": "Breast", "skin-2": "Skin"}[row["slide_id"]]
        assert s["tissue_id"] == list(STHELAR_TISSUES).index(s["tissue"])
        rgb, lab = _source(root, row["name"], mag, grouping)
        assert np.array_equal(s["image"], rgb)
        assert np.array_equal(s["inst_map"], lab["inst_map"]) and np.array_equal(s["type_map"], lab["type_map"])
        assert np.array_equal(s["cell_id_map"], lab["cell_id_map"])
        assert s["counts"].sum() == len(np.unique(lab["inst_map"])) - 1
    assert index.index.is_unique  # indices may repeat across slides; image names never do


def test_fork_index_is_the_grid_position(dataset):
    root, _ = dataset
    before = pd.read_csv(root / "dataset" / "sthelar" / "40x" / "detailed" / "patch_index.csv")
    # the same patch keeps its image name whatever else is in the dataset: index = grid row x 10000 + column
    for row in before.itertuples():
        r, c = divmod(row.index, 10_000)
        assert row.img == f"{row.slide_id.replace('-', '_')}_{row.index}.png"
        assert row.x0 == c * 192 and row.y0 == r * 192


@pytest.mark.parametrize("mag", ["40x", "20x"])
def test_cellvit_folds_follow_the_original_loader(dataset, mag):
    root, card = dataset
    folder = root / "dataset" / "cellvit_folds" / mag / "grouped"
    samples = read_cellvit_folds(folder)
    own = pd.read_csv(root / "dataset" / mag / "grouped" / "splits.csv").set_index("img")
    assert set(samples) == set(own.index)
    config = yaml.safe_load((folder / "dataset_config.yaml").read_text())
    assert config["nuclei_types"] == {"Background": 0, **{c: i + 1 for i, c in enumerate(CATS.groupings["grouped"].classes)}}
    assert config["folds"] == {0: "train", 1: "val", 2: "test"}
    for img, s in samples.items():
        assert {0: "train", 1: "val", 2: "test"}[s["fold"]] == own.loc[img, "split"]
        rgb, lab = _source(root, img.removesuffix(".png"), mag, "grouped")
        assert np.array_equal(s["image"], rgb) and np.array_equal(s["inst_map"], lab["inst_map"])
        assert np.array_equal(s["type_map"], lab["type_map"])


def test_hf_shards_carry_the_published_schema_and_load_with_datasets(dataset, tmp_path):
    root, _ = dataset
    folder = root / "dataset" / "hf" / "40x" / "detailed"
    ds = read_hf(folder, tmp_path / "hf_cache")
    own = pd.read_csv(root / "dataset" / "40x" / "detailed" / "splits.csv")
    assert {k: len(v) for k, v in ds.items()} == {
        "train": int((own["split"] == "train").sum()), "validation": int((own["split"] == "val").sum()),
        "test": int((own["split"] == "test").sum())}
    features = ds["train"].features
    for name, dtype in PUBLISHED.items():
        assert features[name].dtype == dtype, name
    assert type(features["image"]).__name__ == "Image"
    assert list(features["tissue"].names[:13]) == list(STHELAR_TISSUES)
    assert list(features)[:8] == ["file_name", "image", "slide_id", "tissue", "cell_id_map", "Dice", "Jaccard", "bPQ"]
    row = ds["train"][0]
    rgb, lab = _source(root, f"{row['slide_id']}_{row['patch_id']}", "40x", "detailed")
    assert np.array_equal(np.asarray(row["image"]), rgb)
    assert np.array_equal(load_npz(io.BytesIO(row["cell_id_map"])).toarray(), lab["cell_id_map"])
    assert np.array_equal(load_npz(io.BytesIO(row["inst_map"])).toarray(), lab["inst_map"])
    assert np.array_equal(load_npz(io.BytesIO(row["type_map"])).toarray(), lab["type_map"])
    assert features["tissue"].int2str(row["tissue"]) == {"s1": "Breast", "skin-2": "Skin"}[row["slide_id"]]
    ints = np.unique(lab["cell_id_map"][lab["cell_id_map"] > 0])
    assert row["cell_ids"] == encode_cell_ids((ints - 1).astype(np.uint32)).tolist()
    # undefined bPQ stays missing (NaN), as published
    table = pq.read_table(sorted((folder / "data").glob("train-*.parquet"))[0])
    assert str(table.schema.field("bPQ").type) == "halffloat"


def test_hf_image_bytes_are_the_png_files(dataset):
    root, _ = dataset
    table = pq.read_table(sorted((root / "dataset" / "hf" / "20x" / "grouped" / "data").glob("*.parquet"))[0])
    first = table.slice(0, 1).to_pylist()[0]
    decoded = np.array(Image.open(io.BytesIO(first["image"]["bytes"])))
    rgb, _ = _source(root, f"{first['slide_id']}_{first['patch_id']}", "20x", "grouped")
    assert first["image"]["path"] == first["file_name"] and np.array_equal(decoded, rgb)


def test_one_split_for_both_magnifications(dataset):
    """A 20x patch lies in blocks of one split only, the same split the 40x patches there have."""
    root, _ = dataset
    s40 = pd.read_csv(root / "dataset" / "40x" / "detailed" / "splits.csv")
    s20 = pd.read_csv(root / "dataset" / "20x" / "detailed" / "splits.csv")
    split40 = dict(zip(s40["unit"], s40["split"], strict=True))
    for row in s20.itertuples():
        if row.unit in split40:
            assert split40[row.unit] == row.split


def test_unmapped_tissue_names_it_and_the_config_key(tmp_path):
    exports = tmp_path / "exports"
    _export(exports, "s1", "appendix", np.random.default_rng(1), grid=4)
    with pytest.raises(ConfigError, match=r"dataset\.hf\.tissue_names.*'appendix'"):
        write_training_dataset(exports, ["s1"], tmp_path / "dataset", _config(layouts=["hf"]), CATS)


def test_tissue_classes_must_keep_the_published_order(tmp_path):
    exports = tmp_path / "exports"
    _export(exports, "s1", "breast", np.random.default_rng(2), grid=4)
    hf = yaml.safe_load((PACKAGED_CONFIG_DIR / "training.yaml").read_text())["dataset"]["hf"]
    hf["tissue_classes"] = ["Cervix", "Breast", *hf["tissue_classes"][2:]]
    with pytest.raises(InputError, match="13 published STHELAR tissues"):
        write_training_dataset(exports, ["s1"], tmp_path / "dataset", _config(layouts=["hf"], hf=hf), CATS)


def test_slide_ids_that_collide_for_the_fork_are_refused(tmp_path):
    exports = tmp_path / "exports"
    rng = np.random.default_rng(3)
    _export(exports, "a-b", "breast", rng, grid=4)
    _export(exports, "a_b", "breast", rng, grid=4)
    with pytest.raises(InputError, match="differ only by"):
        write_training_dataset(exports, ["a-b", "a_b"], tmp_path / "dataset", _config(layouts=["sthelar"]), CATS)
