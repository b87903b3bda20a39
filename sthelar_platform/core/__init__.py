"""Shared foundations of every stage: ids, errors, atomic outputs, hashing, typed config, storage paths,
lineage, pyramidal images, thumbnails and plots, and the harmonized categories.
"""

from sthelar_platform.core._lazy import lazy_exports

_EXPORTS = {
    "atomic_dir": "atomic",
    "atomic_file": "atomic",
    "write_text_atomic": "atomic",
    "clean_stale_siblings": "atomic",
    "recover_interrupted_swap": "atomic",
    "CategorySystem": "categories",
    "Grouping": "categories",
    "load_config": "config",
    "load_categories": "config",
    "load_synthetic": "config",
    "config_version": "config",
    "overrides_dir": "config",
    "PACKAGED_CONFIG_DIR": "config",
    "InputError": "errors",
    "require_stage_output": "errors",
    "sha256_file": "hashing",
    "sha256_text": "hashing",
    "sha256_tree": "hashing",
    "validate_slide_id": "ids",
    "encode_cell_ids": "ids",
    "decode_cell_ids": "ids",
    "cell_ids_to_mask_ints": "ids",
    "PyramidInfo": "imaging",
    "open_pyramid": "imaging",
    "read_level": "imaging",
    "read_level_region": "imaging",
    "thumbnail_level": "imaging",
    "write_pyramidal_ome_tiff": "imaging",
    "LineageStore": "lineage",
    "utcnow": "lineage",
    "StorageLayout": "paths",
    "category_map_png": "plots",
    "save_png": "thumbnails",
    "png_data_uri": "thumbnails",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
