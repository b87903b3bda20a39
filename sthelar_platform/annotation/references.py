"""Reference single-cell atlases: which file serves a tissue, and whether it is usable.

An atlas is an ``.h5ad`` with integer counts and a label column; its labels map to the
harmonized categories (categories.yaml ``label_map`` plus annotation.yaml additions). Its
content hash is its data version: a changed file means the slides of that tissue must be
re-annotated.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
from scipy import sparse

from sthelar_platform.core.categories import CategorySystem
from sthelar_platform.core.config.annotation import ReferencesConfig
from sthelar_platform.core.errors import ConfigError, InputError
from sthelar_platform.core.hashing import sha256_file

FIX_REF = "provide an .h5ad atlas with raw integer counts in X and the label column named in sthelar_platform/config/annotation.yaml"


@dataclass(frozen=True)
class ReferenceSpec:
    tissue: str
    path: Path
    label_column: str


def reference_spec(tissue: str, references_dir: str | Path, cfg: ReferencesConfig,
                   override: str | Path | None = None, config_file: str | Path = "annotation.yaml") -> ReferenceSpec:
    """The configured atlas of ``tissue`` (a slide's own ``reference`` wins); ``config_file`` names the config
    file in errors.
    """
    own = cfg.tissues.get(tissue)
    file = own.file if own is not None and own.file else cfg.default.file
    label_column = (own.label_column if own is not None else None) or cfg.default.label_column
    if label_column is None:
        raise ConfigError(config_file, f"references.tissues.{tissue}.label_column",
                          f"no label column configured for tissue {tissue!r}",
                          "set references.default.label_column (or the tissue's own) in annotation.yaml")
    if override is not None:
        path = Path(override)
    elif file:
        path = Path(file)
        path = path if path.is_absolute() else Path(references_dir) / path
    else:
        raise ConfigError(config_file, f"references.tissues.{tissue}", f"no reference atlas configured for tissue {tissue!r}",
                          "add it under references.tissues in annotation.yaml or give the slide a `reference:`")
    return ReferenceSpec(tissue=tissue, path=path, label_column=label_column)


def label_map(categories: CategorySystem, cfg: ReferencesConfig) -> dict[str, str]:
    """Reference label -> category: categories.yaml's map plus the annotation config's additions."""
    return {**categories.label_map, **cfg.extra_label_map}


def _label_key(label: str) -> str:
    """Atlases spell one label several ways ("Macrophage", "macrophage", "CD4 T  cell"): compare a folded form."""
    return " ".join(label.replace("_", " ").split()).casefold()


def categories_of(labels: set[str], mapping: dict[str, str]) -> dict[str, str]:
    """Each atlas label's category: an exact entry first, else one equal up to case, spaces and underscores."""
    folded = {_label_key(k): v for k, v in mapping.items()}
    return {lb: mapping[lb] if lb in mapping else folded[_label_key(lb)] for lb in labels
            if lb in mapping or _label_key(lb) in folded}


def _check_counts(x, path: Path) -> None:
    data = x.data if sparse.issparse(x) else np.asarray(x)
    if data.size and (not np.isfinite(data).all() or data.min() < 0):
        raise InputError(path, "reference X has negative or non-finite values (log-normalized or scaled data?)", FIX_REF)
    if data.size and not np.all(np.equal(np.mod(data, 1), 0)):
        raise InputError(path, "reference X has non-integer values (normalized data, not counts)", FIX_REF)


def load_reference(spec: ReferenceSpec, categories: CategorySystem, cfg: ReferencesConfig) -> ad.AnnData:
    """Read and validate the atlas; ``obs['category']`` gets each label's harmonized category."""
    path = spec.path
    if not path.exists():
        raise InputError(path, f"reference atlas for tissue {spec.tissue!r} not found", FIX_REF)
    try:
        ref = ad.read_h5ad(path)
    except Exception as exc:  # h5py/anndata raise many types for a corrupt file
        raise InputError(path, f"not a readable .h5ad file ({type(exc).__name__}: {exc})", FIX_REF) from exc
    if spec.label_column not in ref.obs:
        raise InputError(path, f"reference has no label column {spec.label_column!r} (columns: {list(ref.obs.columns)})",
                         "set references.default.label_column (or the tissue's) in sthelar_platform/config/annotation.yaml")
    if ref.n_obs == 0 or ref.n_vars == 0:
        raise InputError(path, f"reference is empty ({ref.n_obs} cells x {ref.n_vars} genes)", FIX_REF)
    _check_counts(ref.X, path)
    labels = ref.obs[spec.label_column].astype(str)
    mapping = categories_of(set(labels), label_map(categories, cfg))
    cats = categories
    unknown = sorted(set(labels) - set(mapping))
    if unknown:
        raise InputError(path, f"labels without a category: {unknown[:8]}{' …' if len(unknown) > 8 else ''}",
                         "map them in references.extra_label_map (sthelar_platform/config/annotation.yaml)")
    bad = sorted({mapping[lb] for lb in set(labels)} - set(cats.categories) - set(cats.special_labels))
    if bad:
        raise ConfigError("categories.yaml", "label_map", f"points to unknown categories {bad}",
                          "map those labels to categories.yaml `categories` (or annotation.yaml extra_label_map)")
    small = labels.value_counts()
    small = small[small < cfg.min_cells_per_label]
    ref = ref[~labels.isin(small.index)].copy()
    ref.obs["label"] = ref.obs[spec.label_column].astype(str).values
    ref.obs["category"] = [mapping[lb] for lb in ref.obs["label"]]
    ref.uns["sha256"] = sha256_file(path)
    return ref
