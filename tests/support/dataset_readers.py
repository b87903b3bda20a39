"""Readers that follow, rule by rule, how the field's training code reads a dataset folder.

Written from the published loaders' reading rules (not imported from them): the STHELAR CellViT fork's
``PanNukeDataset`` (zip members, the ``([a-zA-Z0-9_]+)_\\d+\\.png`` name pattern, CSR reconstruction,
``cell_count_<fold>.csv`` with ``index_col=0``), the original CellViT loader (``fold<k>/images/*.png``,
``fold<k>/labels/<stem>.npy`` as a pickled dict, ``fold<k>/types.csv``, ``fold<k>/cell_count.csv``) and
``datasets.load_dataset("parquet")`` for the Hugging Face layout.
"""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from PIL import Image
from scipy.sparse import csr_matrix, load_npz

FORK_NAME = re.compile(r"([a-zA-Z0-9_]+)_\d+\.png")


def read_fork(folder: Path) -> dict[str, dict]:
    """Every sample the fork's loader would yield, keyed by image name."""
    config = yaml.safe_load((folder / "dataset_config.yaml").read_text())
    types = pd.read_csv(folder / "types.csv")
    assert list(types.columns) == ["img", "type"]
    type_of = types.set_index("img")["type"].to_dict()
    samples = {}
    with zipfile.ZipFile(folder / "images.zip") as images, zipfile.ZipFile(folder / "labels.zip") as labels, \
            zipfile.ZipFile(folder / "masks_cell_ids_nuclei.zip") as cell_ids:
        image_names, label_names = set(images.namelist()), set(labels.namelist())
        for fold in ("train", "valid", "test"):
            counts = pd.read_csv(folder / f"cell_count_{fold}.csv", index_col=0)
            assert counts.index.name == "Image"
            for name in counts.index:
                mask_name = f"{name.rsplit('.', 1)[0]}.npz"
                assert name in image_names and mask_name in label_names, name
                match = FORK_NAME.match(name)
                assert match, f"{name} does not match the fork's pattern"
                data = np.load(io.BytesIO(labels.read(mask_name)), allow_pickle=True)
                inst = csr_matrix((data["inst_map_data"], data["inst_map_indices"], data["inst_map_indptr"]),
                                  shape=data["inst_map_shape"]).toarray().astype(np.int32)
                types_map = csr_matrix((data["type_map_data"], data["type_map_indices"], data["type_map_indptr"]),
                                       shape=data["type_map_shape"]).toarray().astype(np.int32)
                samples[name] = {
                    "fold": fold, "slide_id": match.group(1), "tissue": type_of[name],
                    "tissue_id": config["tissue_types"][type_of[name]],
                    "image": np.array(Image.open(io.BytesIO(images.read(name)))).astype(np.uint8),
                    "inst_map": inst, "type_map": types_map,
                    "cell_id_map": load_npz(io.BytesIO(cell_ids.read(mask_name))).toarray().astype(np.int64),
                    "counts": counts.loc[name].to_numpy(),
                }
    return samples


def read_cellvit_folds(folder: Path) -> dict[str, dict]:
    """Every sample the original CellViT loader would yield from folds 0, 1 and 2, keyed by image name."""
    config = yaml.safe_load((folder / "dataset_config.yaml").read_text())
    samples = {}
    for k in (0, 1, 2):
        fold = folder / f"fold{k}"
        type_of = pd.read_csv(fold / "types.csv").set_index("img")["type"].to_dict()
        counts = pd.read_csv(fold / "cell_count.csv", index_col=0)
        for image in sorted((fold / "images").glob("*.png")):
            label = fold / "labels" / f"{image.stem}.npy"
            assert label.is_file(), f"no annotation for {image}"
            mask = np.load(label, allow_pickle=True)
            samples[image.name] = {
                "fold": k, "tissue": type_of[image.name], "tissue_id": config["tissue_types"][type_of[image.name]],
                "image": np.array(Image.open(image)).astype(np.uint8),
                "inst_map": mask[()]["inst_map"].astype(np.int32), "type_map": mask[()]["type_map"].astype(np.int32),
                "counts": counts.loc[image.name].to_numpy(),
            }
    return samples


def read_hf(folder: Path, cache: Path):
    """The layout through ``datasets.load_dataset("parquet")``, offline, cached under ``cache``."""
    import os

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import datasets

    return datasets.load_dataset("parquet", data_dir=str(folder / "data"), cache_dir=str(cache))
