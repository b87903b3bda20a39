"""The training dataset in the layouts the field's training code reads unchanged.

Each layout is a packaging of the same split patches (the split is ours, made in ``dataset``):

- ``sthelar``: what the STHELAR CellViT fork reads (``cell_segmentation/datasets/pannuke.py``):
  ``images.zip`` / ``labels.zip`` (members ``<slide>_<index>.png`` / ``.npz`` with the CSR parts of
  ``inst_map`` and ``type_map``), ``masks_cell_ids_nuclei.zip`` (scipy ``save_npz`` members),
  ``types.csv`` (``img,type``), ``cell_count_{train,valid,test}.csv`` (``Image`` + counts),
  ``dataset_config.yaml`` and our ``patch_index.csv`` mapping each index back to the patch;
- ``cellvit_folds``: the original CellViT trainer's ``fold<k>/{images,labels}`` (labels as ``.npy``
  holding a pickled dict ``inst_map``, ``type_map``), ``fold<k>/types.csv``,
  ``fold<k>/cell_count.csv`` and ``dataset_config.yaml``; fold 0/1/2 = train/val/test;
- ``hf``: Parquet shards with the public STHELAR_40x / STHELAR_20x features (``file_name``, ``image``,
  ``slide_id``, ``tissue`` as a ClassLabel, ``cell_id_map``, ``Dice``, ``Jaccard``, ``bPQ``) plus ours,
  named ``data/<split>-NNNNN-of-MMMMM.parquet`` so ``datasets.load_dataset("parquet", data_dir=...)``
  finds the splits.

Everything is written entry by entry (zip members, Parquet row groups): memory stays bounded by one
shard's row group whatever the dataset size.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from scipy import sparse

from sthelar_platform.core.config.training import HFLayoutConfig
from sthelar_platform.core.errors import ConfigError, InputError
from sthelar_platform.core.ids import encode_cell_ids, mask_ints
from sthelar_platform.core.warehouse import CellViTLayoutFolder
from sthelar_platform.tiling.exports import link_patch_file
from sthelar_platform.tiling.patches import load_labels

LAYOUTS = ("sthelar", "cellvit_folds", "hf")
# the published STHELAR tissue ClassLabel, in its order (extra tissues may only be appended)
STHELAR_TISSUES = ("Breast", "Cervix", "Colon", "Heart", "Kidney", "Liver", "Lung", "LymphNode", "Ovarian",
                   "Pancreatic", "Prostate", "Skin", "Tonsil")
FORK_FOLDS = {"train": "train", "val": "valid", "test": "test"}
CELLVIT_FOLDS = {"train": 0, "val": 1, "test": 2}
HF_SPLITS = {"train": "train", "val": "validation", "test": "test"}
FORK_NAME = re.compile(r"([a-zA-Z0-9_]+)_\d+\.png")  # the fork's own pattern, slide id + "_" + integer


@dataclass(frozen=True)
class LayoutInput:
    """The split patches of one magnification and grouping, and where their files are."""

    patches: pd.DataFrame  # name, Image, source, slide_id, split, tissue, row, col, x0, y0, dice, jaccard, bpq, counts
    classes: tuple[str, ...]
    magnification: str
    grouping: str


def tissue_label(tissue: str, cfg: HFLayoutConfig) -> str:
    """The published tissue name of one of ours (config ``dataset.hf.tissue_names``)."""
    try:
        return cfg.tissue_names[tissue]
    except KeyError:
        raise ConfigError("training.yaml", "dataset.hf.tissue_names", f"tissue {tissue!r} has no published tissue name",
                          f"map it to one of {list(cfg.tissue_classes)}, or to a name appended to "
                          "dataset.hf.tissue_classes") from None


def check_tissue_classes(cfg: HFLayoutConfig) -> None:
    """The ClassLabel must start with the published 13 names, in order, so indices mix with STHELAR's."""
    names = tuple(cfg.tissue_classes)
    if names[:len(STHELAR_TISSUES)] != STHELAR_TISSUES or len(set(names)) != len(names):
        raise ConfigError("training.yaml", "dataset.hf.tissue_classes", "must start with the 13 published STHELAR "
                          "tissues in their order and hold no duplicate", f"start it with {list(STHELAR_TISSUES)}")
    unknown = sorted(set(cfg.tissue_names.values()) - set(names))
    if unknown:
        raise ConfigError("training.yaml", "dataset.hf.tissue_names", f"maps to {unknown}, not in "
                          "dataset.hf.tissue_classes", "append those names to dataset.hf.tissue_classes")


def fork_names(patches: pd.DataFrame) -> pd.Series:
    """``<slide>_<index>.png`` per patch: the index (grid row x 10000 + column) is stable when patches come and
    go; slide ids become ``[a-zA-Z0-9_]`` (``-`` -> ``_``) so the fork's pattern finds them.
    """
    prefix = patches["slide_id"].str.replace("-", "_", regex=False)
    clash = prefix.groupby(prefix).transform(lambda s: patches.loc[s.index, "slide_id"].nunique()) > 1
    if clash.any():
        raise InputError("catalog.yaml", f"slide ids {sorted(patches.loc[clash, 'slide_id'].unique())} differ only by "
                         "'-' / '_'", "rename one of the slides: the STHELAR fork reads slide ids as [a-zA-Z0-9_]+")
    index = patches["row"].astype(np.int64) * 10_000 + patches["col"].astype(np.int64)
    names = prefix + "_" + index.astype(str) + ".png"
    if names.duplicated().any():
        raise ValueError("two patches got the same STHELAR image name: their grid rows / columns clash")
    return names


def csr_parts(prefix: str, arr: np.ndarray) -> dict[str, np.ndarray]:
    """The CSR arrays the fork rebuilds a map from: ``<prefix>_data/_indices/_indptr/_shape``."""
    m = sparse.csr_matrix(arr.astype(np.int32))
    return {f"{prefix}_data": m.data, f"{prefix}_indices": m.indices, f"{prefix}_indptr": m.indptr,
            f"{prefix}_shape": np.asarray(m.shape, np.int64)}


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """A compressed ``.npz`` in memory (one patch's worth)."""
    buf = io.BytesIO()
    np.savez_compressed(buf, allow_pickle=False, **arrays)
    return buf.getvalue()


def sparse_npz_bytes(arr: np.ndarray) -> bytes:
    """``scipy.sparse.save_npz`` of a map as bytes: the published ``cell_id_map`` encoding."""
    buf = io.BytesIO()
    sparse.save_npz(buf, sparse.csr_matrix(arr.astype(np.int64)), compressed=True)
    return buf.getvalue()


def _rows(layout: LayoutInput) -> Iterator[tuple[Any, dict[str, np.ndarray], bytes]]:
    """Each patch row (a pandas named tuple) with its label arrays and PNG bytes, read one at a time."""
    for row in layout.patches.itertuples(index=False):
        src = CellViTLayoutFolder(row.source)
        yield row, load_labels(src.label(row.name)), src.image(row.name).read_bytes()


def _dataset_config(layout: LayoutInput, tissues: list[str], extra: dict | None = None) -> str:
    cfg = {"tissue_types": {t: i for i, t in enumerate(tissues)},
           "nuclei_types": {"Background": 0, **{c: i + 1 for i, c in enumerate(layout.classes)}},
           "magnification": layout.magnification, "grouping": layout.grouping, **(extra or {})}
    return yaml.safe_dump(cfg, sort_keys=False)


def _counts(frame: pd.DataFrame, image: pd.Series, classes: tuple[str, ...]) -> pd.DataFrame:
    out = frame[list(classes)].astype(int).copy()
    out.insert(0, "Image", image.to_numpy())
    return out


def write_sthelar_layout(layout: LayoutInput, out: Path, hf_cfg: HFLayoutConfig) -> dict:
    """The STHELAR fork's zip layout; returns the number of patches per fold."""
    out.mkdir(parents=True)
    p = layout.patches.reset_index(drop=True)
    names = fork_names(p)
    tissue = p["tissue"].map(lambda t: tissue_label(t, hf_cfg))
    with zipfile.ZipFile(out / "images.zip", "w", zipfile.ZIP_STORED) as images, \
            zipfile.ZipFile(out / "labels.zip", "w", zipfile.ZIP_STORED) as labels, \
            zipfile.ZipFile(out / "masks_cell_ids_nuclei.zip", "w", zipfile.ZIP_STORED) as cell_ids:
        for (row, lab, png), name in zip(_rows(layout), names, strict=True):
            stem = name.removesuffix(".png")
            images.writestr(name, png)  # PNG is compressed already
            labels.writestr(f"{stem}.npz", npz_bytes({**csr_parts("inst_map", lab["inst_map"]),
                                                      **csr_parts("type_map", lab["type_map"])}))
            cell_ids.writestr(f"{stem}.npz", sparse_npz_bytes(lab["cell_id_map"]))
    pd.DataFrame({"img": names, "type": tissue}).to_csv(out / "types.csv", index=False)
    per_fold = {}
    for split, fold in FORK_FOLDS.items():
        sel = p["split"] == split
        _counts(p[sel], names[sel], layout.classes).to_csv(out / f"cell_count_{fold}.csv", index=False)
        per_fold[fold] = int(sel.sum())
    pd.DataFrame({"index": p["row"].astype(np.int64) * 10_000 + p["col"].astype(np.int64), "img": names,
                  "name": p["name"], "patch_id": _patch_ids(p), "slide_id": p["slide_id"],
                  "magnification": layout.magnification, "x0": p["x0"], "y0": p["y0"], "split": p["split"]}
                 ).to_csv(out / "patch_index.csv", index=False)
    (out / "dataset_config.yaml").write_text(_dataset_config(layout, list(hf_cfg.tissue_classes),
                                                              {"train_folds": ["train"], "val_folds": ["valid"],
                                                               "test_folds": ["test"]}))
    return per_fold


def _patch_ids(p: pd.DataFrame) -> pd.Series:
    return pd.Series([n.removeprefix(f"{s}_") for n, s in zip(p["name"], p["slide_id"], strict=True)], index=p.index)


def write_cellvit_folds(layout: LayoutInput, out: Path, hf_cfg: HFLayoutConfig) -> dict:
    """The original CellViT trainer's fold layout; returns the number of patches per fold."""
    out.mkdir(parents=True)
    p = layout.patches.reset_index(drop=True)
    tissue = p["tissue"].map(lambda t: tissue_label(t, hf_cfg))
    per_fold = {}
    for split, k in CELLVIT_FOLDS.items():
        fold = out / f"fold{k}"
        (fold / "images").mkdir(parents=True)
        (fold / "labels").mkdir()
        sel = (p["split"] == split).to_numpy()
        part = LayoutInput(p[sel], layout.classes, layout.magnification, layout.grouping)
        for row, lab, _png in _rows(part):
            link_patch_file(CellViTLayoutFolder(row.source).image(row.name), fold / "images" / f"{row.name}.png")
            # the trainer's format: np.load(allow_pickle=True)[()] -> {"inst_map", "type_map"}
            trainer_labels = np.array({"inst_map": lab["inst_map"].astype(np.int32),
                                       "type_map": lab["type_map"].astype(np.int32)}, dtype=object)
            np.save(fold / "labels" / f"{row.name}.npy", trainer_labels, allow_pickle=True)
        images = p.loc[sel, "Image"]
        _counts(p[sel], images, layout.classes).to_csv(fold / "cell_count.csv", index=False)
        pd.DataFrame({"img": images, "type": tissue[sel]}).to_csv(fold / "types.csv", index=False)
        per_fold[f"fold{k}"] = int(sel.sum())
    (out / "dataset_config.yaml").write_text(_dataset_config(layout, list(hf_cfg.tissue_classes),
                                                              {"folds": {k: s for s, k in CELLVIT_FOLDS.items()}}))
    return per_fold


def hf_features(classes: tuple[str, ...], tissue_classes: list[str]) -> dict:
    """The ``datasets`` feature spec: the published STHELAR features first, then ours."""
    value = lambda dtype: {"dtype": dtype, "_type": "Value"}  # noqa: E731
    return {
        "file_name": value("string"), "image": {"_type": "Image"}, "slide_id": value("string"),
        "tissue": {"names": list(tissue_classes), "_type": "ClassLabel"}, "cell_id_map": value("binary"),
        "Dice": value("float16"), "Jaccard": value("float16"), "bPQ": value("float16"),
        # ours
        "patch_id": value("string"), "split": value("string"), "magnification": value("string"),
        "x0": value("int32"), "y0": value("int32"), "inst_map": value("binary"), "type_map": value("binary"),
        "cell_ids": {"feature": value("string"), "_type": "List"},
        "cell_counts": {"feature": value("int32"), "_type": "List"},
    }


def hf_schema(classes: tuple[str, ...], tissue_classes: list[str]) -> pa.Schema:
    """The Arrow schema of the shards, with the feature spec ``datasets`` reads back in its metadata."""
    fields = [
        ("file_name", pa.string()), ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        ("slide_id", pa.string()), ("tissue", pa.int64()), ("cell_id_map", pa.binary()),
        ("Dice", pa.float16()), ("Jaccard", pa.float16()), ("bPQ", pa.float16()),
        ("patch_id", pa.string()), ("split", pa.string()), ("magnification", pa.string()),
        ("x0", pa.int32()), ("y0", pa.int32()), ("inst_map", pa.binary()), ("type_map", pa.binary()),
        ("cell_ids", pa.list_(pa.string())), ("cell_counts", pa.list_(pa.int32())),
    ]
    meta = {"info": {"features": hf_features(classes, tissue_classes)},
            "sthelar": {"cell_counts": list(classes), "maps": "scipy.sparse.save_npz bytes (CSR)"}}
    return pa.schema(fields, metadata={b"huggingface": json.dumps(meta).encode()})


def _float16(values: pd.Series) -> np.ndarray:
    """QC metrics as float16, as published (NaN where a metric is undefined, e.g. bPQ without nuclei)."""
    return pd.to_numeric(values, errors="coerce").to_numpy(np.float16)


class CellIdLookup:
    """Mask integer -> cell id, per slide, from the slide export's cell_labels.parquet (any id scheme)."""

    def __init__(self) -> None:
        self._by_slide: dict[Path, dict[int, str]] = {}

    def __call__(self, source: str, cell_id_map: np.ndarray) -> list[str]:
        ints = np.unique(cell_id_map[cell_id_map > 0]).tolist()
        export = Path(source).parents[2]  # exports/<slide>/cellvit/<mag>/<grouping>
        if export not in self._by_slide:
            labels = export / "cell_labels.parquet"
            ids = pd.read_parquet(labels, columns=["cell_id"])["cell_id"].astype(str).to_numpy() if labels.exists() \
                else np.zeros(0, str)
            self._by_slide[export] = dict(zip(mask_ints(ids)[0].tolist(), ids.tolist(), strict=True))
        lookup = self._by_slide[export]
        # without a labels table, Xenium-coded integers still decode
        return [lookup.get(i) or str(encode_cell_ids(np.array([i - 1], np.uint32))[0]) for i in ints
                if i in lookup or i <= 2**32]


def write_hf_layout(layout: LayoutInput, out: Path, cfg: HFLayoutConfig) -> dict:
    """Parquet shards per split (``data/<split>-NNNNN-of-MMMMM.parquet``); returns the rows per split."""
    check_tissue_classes(cfg)
    (out / "data").mkdir(parents=True)
    p = layout.patches.reset_index(drop=True)
    names = fork_names(p)
    schema = hf_schema(layout.classes, list(cfg.tissue_classes))
    tissue_index = {t: i for i, t in enumerate(cfg.tissue_classes)}
    cell_ids = CellIdLookup()
    rows_per_split = {}
    for split, hf_split in HF_SPLITS.items():
        part = p[p["split"] == split]
        n_shards = max(1, -(-len(part) // cfg.shard_rows))
        rows_per_split[hf_split] = len(part)
        for k in range(n_shards):
            chunk = part.iloc[k * cfg.shard_rows:(k + 1) * cfg.shard_rows]
            path = out / "data" / f"{hf_split}-{k:05d}-of-{n_shards:05d}.parquet"
            with pq.ParquetWriter(path, schema, compression="zstd") as writer:
                for start in range(0, max(len(chunk), 1), cfg.row_group_rows):
                    group = chunk.iloc[start:start + cfg.row_group_rows]
                    gl = LayoutInput(group, layout.classes, layout.magnification, layout.grouping)
                    cols: dict[str, Any] = {f.name: [] for f in schema}
                    for (row, lab, png), name in zip(_rows(gl), names.loc[group.index], strict=True):
                        cols["file_name"].append(name)
                        cols["image"].append({"bytes": png, "path": name})
                        cols["cell_id_map"].append(sparse_npz_bytes(lab["cell_id_map"]))
                        cols["inst_map"].append(sparse_npz_bytes(lab["inst_map"]))
                        cols["type_map"].append(sparse_npz_bytes(lab["type_map"]))
                        cols["cell_ids"].append(cell_ids(row.source, lab["cell_id_map"]))
                    cols["slide_id"] = group["slide_id"].tolist()
                    cols["tissue"] = [tissue_index[tissue_label(t, cfg)] for t in group["tissue"]]
                    cols["Dice"], cols["Jaccard"], cols["bPQ"] = (_float16(group[c]) for c in ("dice", "jaccard", "bpq"))
                    cols["patch_id"] = _patch_ids(group).tolist()
                    cols["split"] = [split] * len(group)
                    cols["magnification"] = [layout.magnification] * len(group)
                    cols["x0"], cols["y0"] = group["x0"].astype(int).tolist(), group["y0"].astype(int).tolist()
                    cols["cell_counts"] = group[list(layout.classes)].astype(int).to_numpy().tolist()
                    table = pa.Table.from_arrays([pa.array(cols[f.name], type=f.type) for f in schema], schema=schema)
                    writer.write_table(table)
    (out / "README.md").write_text(
        f"# STHELAR-style {layout.magnification} dataset ({layout.grouping} classes)\n\n"
        "SYNTHETIC unless your slides are real. Read with\n`datasets.load_dataset(\"parquet\", "
        "data_dir=\"<this folder>/data\")`.\n\nFeatures: the public STHELAR_40x / STHELAR_20x features, then "
        "`patch_id`, `split`, `magnification`, `x0`, `y0`, `inst_map`, `type_map` (scipy.sparse.save_npz bytes), "
        f"`cell_ids` and `cell_counts` (per class: {', '.join(layout.classes)}).\n")
    return rows_per_split
