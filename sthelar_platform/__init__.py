"""The STHELAR domain library: one subpackage per pipeline stage, no Dagster import anywhere.

- ``core``: ids, errors, atomic outputs, hashing, typed config, paths, lineage, imaging, categories
- ``ingest``: Xenium bundles and H&E images in, slide manifests, the landing area
- ``registration``: H&E -> Xenium affine, measured; the registered H&E
- ``annotation``: counts, Tangram, clustering and markers, the labelling rule, cross-check
- ``tiling``: patches and masks at 40x / 20x, reference segmentation, agreement QC, exports
- ``model``: training dataset, CellViT (``model.cellvit``) training, evaluation, predictions
- ``qc``: dbt plumbing and the QC dashboard
- ``synth``: SYNTHETIC slides, atlases and truth

Configuration is read at the edge (assets, CLI) with ``core.config.load_config`` and passed in as arguments.
"""
