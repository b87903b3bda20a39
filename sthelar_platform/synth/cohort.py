"""Whole synthetic slides and cohorts: layout, expression, bundle, H&E and truth, written atomically.

The platform's embedded default data and the tests' fixture. Every bundle is written in
the on-disk layout of a Xenium (XOA v2) output folder so the real spatialdata-io reader
reads it; truth (true cell types, true transform) lives beside the bundle, never inside.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import polars as pl
import scipy.sparse as sp
import yaml

from sthelar_platform.core.atomic import atomic_dir, atomic_file
from sthelar_platform.core.categories import CategorySystem
from sthelar_platform.core.config import SyntheticConfig, WorldDeformation
from sthelar_platform.core.displacement import DisplacementField, random_field
from sthelar_platform.core.errors import ConfigError
from sthelar_platform.core.ids import validate_slide_id
from sthelar_platform.core.imaging import write_averaged_pyramid, write_pyramidal_ome_tiff, write_tiled_tiff
from sthelar_platform.core.wsi import WholeSlide
from sthelar_platform.synth import _xenium_writer as xw
from sthelar_platform.synth._expression import (
    Programs,
    build_programs,
    sample_panel_counts,
    sample_reference_counts,
    slide_mixing,
)
from sthelar_platform.synth._flavours import apply_flavour
from sthelar_platform.synth._he_realism import draw_appearance
from sthelar_platform.synth._layout import GRID_UM, REGION_CODE, Cells, build_layout, place_cells
from sthelar_platform.synth._render import DapiRenderer, HERenderer
from sthelar_platform.synth.transform import TransformSpec, he_to_morphology_matrix, write_alignment_csv

Progress = Callable[[str], None]


@dataclass(frozen=True)
class SyntheticSlide:
    slide_id: str
    tissue: str
    folder: Path
    xenium_dir: Path
    he_image: Path
    alignment_csv: Path
    truth_dir: Path
    n_cells: int
    n_transcripts: int


def _write_scanner_pyramid(path: Path, shape: tuple[int, int], render: HERenderer, pixel_size_um: float) -> None:
    """The H&E as a scanner stores it: level 0 rendered, every lower level area-averaged from it.

    Rendering each level from geometry gave crisper low levels than any real pyramid; detection
    and 20x patches then saw another image than in a converted copy of the same slide.
    """
    scratch = path.with_name(path.name + ".level0.tif")
    try:
        write_tiled_tiff(scratch, shape, lambda _level, y, x, h, w: render(0, y, x, h, w))
        with WholeSlide(scratch) as level0:
            write_averaged_pyramid(level0, path, pixel_size_um)
    finally:
        scratch.unlink(missing_ok=True)

def _noop(_: str) -> None:
    return None


def default_transform(rng: np.random.Generator) -> TransformSpec:
    """A random, realistic H&E -> Xenium transform: small rotation and scale jitter, quarter turns, flips."""
    return TransformSpec(rotation_deg=float(rng.uniform(-8, 8)), scale_jitter=float(rng.uniform(-0.02, 0.02)),
                         quarter_turns=int(rng.integers(0, 4)), flip=bool(rng.random() < 0.3))


def synthesize_slide(out_root: str | Path, slide_id: str, tissue: str, size: str, seed: int, config: SyntheticConfig,
                     categories: CategorySystem, transform: TransformSpec | None = None,
                     progress: Progress = _noop, xoa: str | None = None, quirks: tuple[str, ...] = (),
                     world: str | None = None) -> SyntheticSlide:
    """Write ``out_root/<slide_id>/{xenium,he,truth}`` atomically.

    ``xoa`` picks a Xenium generation's on-disk layout (``_flavours.FLAVOURS``; None: the canonical 2.x
    bundle the demo uses) and ``quirks`` adds odd cases seen in the field (``_flavours.QUIRKS``); the
    biology and the images are the same for every flavour. ``world`` names a ``worlds`` entry of the
    config (None: the size's own): a realistic world mixes neighbours', doublet partners' and ambient
    RNA into the expected counts and shifts the slide's genes (``_expression.SlideMixing``).
    """
    cfg = config
    validate_slide_id(slide_id)
    if size not in cfg.sizes:
        raise ConfigError("synthetic.yaml", "sizes", f"unknown synthetic size {size!r}", f"use one of {', '.join(cfg.sizes)}")
    if tissue not in cfg.tissues:
        raise ConfigError("synthetic.yaml", "tissues", f"unknown synthetic tissue {tissue!r}",
                          f"use one of {', '.join(cfg.tissues)}")
    size_cfg = cfg.sizes[size]
    world_name = _world_name(cfg, size, world)
    extent = (float(size_cfg.extent_um[0]), float(size_cfg.extent_um[1]))
    rng = np.random.default_rng([seed, sum(map(ord, slide_id))])
    morph_um, he_um = cfg.morphology_pixel_size_um, cfg.he_pixel_size_um
    transform = transform or default_transform(rng)
    programs = build_programs(cfg, size_cfg.panel_genes)
    cats = categories

    progress(f"{slide_id}: laying out {tissue} tissue")
    layout = build_layout(cfg.tissues[tissue], extent, rng)
    cells = place_cells(layout, tissue, cfg, rng, density_scale=float(size_cfg.density_scale))
    n = len(cells)
    if n == 0:
        raise ConfigError("synthetic.yaml", f"sizes.{size}", "the synthetic layout produced no cells",
                          "use a larger size or another seed")
    less10 = rng.random(n) < cfg.less10_fraction
    # the mixing draws from its own generator, so the simple world's slides stay what they were
    mixing = slide_mixing(cfg.worlds[world_name].expression, cells.x, cells.y, programs.n_panel,
                          np.random.default_rng([seed, 11, sum(map(ord, slide_id))]))
    counts = sample_panel_counts(programs, cells.fine_label, size_cfg.transcripts_per_cell, less10, rng, mixing)
    prefixes, cell_ids = xw.make_cell_ids(n, rng)
    morph_shape = (int(np.ceil(extent[1] / morph_um)), int(np.ceil(extent[0] / morph_um)))
    he_to_morph, he_shape = he_to_morphology_matrix(transform, he_um, morph_um, extent)

    final = Path(out_root) / slide_id
    with atomic_dir(final) as tmp:
        bundle, he_dir, truth = tmp / "xenium", tmp / "he", tmp / "truth"
        for d in (bundle / "morphology_focus", he_dir, truth):
            d.mkdir(parents=True)
        progress(f"{slide_id}: {n} cells; writing boundaries and transcripts")
        owners = xw.write_boundaries(bundle, cells, cell_ids)
        tissue_cells = np.argwhere(layout.region != REGION_CODE["background"])
        tissue_xy = ((tissue_cells[:, 1] + 0.5) * GRID_UM, (tissue_cells[:, 0] + 0.5) * GRID_UM)
        stats, control_counts = xw.write_transcripts_and_matrix(bundle, cells, cell_ids, counts, list(programs.panel), cfg, tissue_xy, rng)
        progress(f"{slide_id}: writing cells table and label masks")
        xw.write_cells_tables(bundle, cells, cell_ids, prefixes, counts, xw.control_counts_per_cell(control_counts),
                              owners, morph_um, morph_shape)
        xw.write_experiment(bundle, cfg, slide_id, extent, n, stats["total"], list(programs.panel))
        progress(f"{slide_id}: rendering DAPI {morph_shape[1]}x{morph_shape[0]} px")
        write_pyramidal_ome_tiff(bundle / "morphology_focus" / "morphology_focus_0000.ome.tif", morph_shape,
                                 DapiRenderer(cells, morph_um, seed), dtype=np.uint16, channels=None,
                                 pixel_size_um=morph_um, channel_names=["DAPI"])
        progress(f"{slide_id}: rendering H&E {he_shape[1]}x{he_shape[0]} px")
        he_to_um = np.diag([morph_um, morph_um, 1.0]) @ he_to_morph
        he_name = f"{slide_id}_he_image.ome.tif"
        deformation = section_deformation(cfg.worlds[world_name].he_deformation, extent,
                                          np.random.default_rng([seed, 13, sum(map(ord, slide_id))]))
        # the appearance draws from its own generator too
        appearance = draw_appearance(cfg.worlds[world_name].he, cells, layout,
                                     np.random.default_rng([seed, 17, sum(map(ord, slide_id))]))
        render = HERenderer(cells, layout, he_to_um, cfg.eosin, seed, deformation, appearance)
        _write_scanner_pyramid(he_dir / he_name, he_shape, render, he_um)
        write_alignment_csv(he_dir / f"{slide_id}_he_imagealignment.csv", he_to_morph)
        if xoa is not None or quirks:
            progress(f"{slide_id}: rewriting the bundle as XOA {xoa or 'canonical'}"
                     f"{' + ' + ', '.join(quirks) if quirks else ''}")
            apply_flavour(bundle, xoa, tuple(quirks), rng)
        _write_truth(truth, cells, cell_ids, counts, cats, programs, he_to_morph, transform, cfg, tissue,
                     mixing.doublet if mixing is not None else np.zeros(n, bool), world_name)
        if deformation is not None:
            (truth / "deformation.json").write_text(json.dumps(deformation.to_dict()))
        if appearance is not None:
            (truth / "he_appearance.json").write_text(json.dumps(appearance.to_dict(), indent=2))
        (tmp / "SYNTHETIC.txt").write_text(
            "SYNTHETIC DATA generated by sthelar_platform.synth; not a real Xenium run.\n"
            f"slide_id={slide_id} tissue={tissue} size={size} seed={seed} world={world_name}\n")
    return SyntheticSlide(slide_id=slide_id, tissue=tissue, folder=final, xenium_dir=final / "xenium",
                          he_image=final / "he" / he_name, alignment_csv=final / "he" / f"{slide_id}_he_imagealignment.csv",
                          truth_dir=final / "truth", n_cells=n, n_transcripts=int(stats["total"]))


def section_deformation(spec: WorldDeformation, extent_um: tuple[float, float],
                        rng: np.random.Generator) -> DisplacementField | None:
    """The H&E section's smooth non-rigid displacement against the DAPI (a realistic world), or None."""
    if not spec.amplitude_um:
        return None
    return random_field(np.zeros(2), np.asarray(extent_um, float), float(spec.amplitude_um), float(spec.edge_gain),
                        float(spec.correlation_um), rng)


def true_he_to_um(truth_dir: Path) -> Callable[[np.ndarray], np.ndarray]:
    """A synthetic slide's true map from level-0 H&E pixels (n, 2) to Xenium µm, deformation included."""
    t = json.loads((truth_dir / "transform.json").read_text())
    um = float(t["morphology_pixel_size_um"])
    affine = np.diag([um, um, 1.0]) @ np.asarray(t["he_to_morphology"], float)
    field = truth_dir / "deformation.json"
    deformation = DisplacementField.from_dict(json.loads(field.read_text())) if field.exists() else None

    def mapping(he_px: np.ndarray) -> np.ndarray:
        q = np.asarray(he_px, float) @ affine[:2, :2].T + affine[:2, 2]
        return q if deformation is None else deformation.inverse(q)

    return mapping


def _world_name(cfg: SyntheticConfig, size: str, world: str | None) -> str:
    name = world or cfg.sizes[size].world
    if name not in cfg.worlds:
        raise ConfigError("synthetic.yaml", "worlds", f"unknown synthetic world {name!r}", f"use one of {', '.join(cfg.worlds)}")
    return name


def _write_truth(truth: Path, cells: Cells, cell_ids: np.ndarray, counts: Any, cats: CategorySystem, programs: Programs,
                 he_to_morph: np.ndarray, transform: TransformSpec, cfg: SyntheticConfig, tissue: str,
                 doublet: np.ndarray, world: str) -> None:
    total = np.asarray(counts.sum(1)).ravel()
    expected = np.where(total <= cats.less10_max_transcripts, "Less10", cells.category)
    detailed, grouped = cats.groupings["detailed"], cats.groupings["grouped"]
    pl.DataFrame({
        "cell_id": cell_ids, "category": expected, "true_category": cells.category, "fine_label": cells.fine_label,
        "detailed_class": [detailed.category_to_class[c] for c in expected],
        "grouped_class": [grouped.category_to_class[c] for c in expected],
        "region": np.array(list(REGION_CODE))[cells.region], "n_transcripts": total.astype(np.int64),
        "has_nucleus": cells.has_nucleus, "x_um": cells.x, "y_um": cells.y, "doublet": doublet,
    }).write_parquet(truth / "cells.parquet")
    (truth / "transform.json").write_text(json.dumps({
        "he_to_morphology": he_to_morph.tolist(), "morphology_pixel_size_um": cfg.morphology_pixel_size_um,
        "he_pixel_size_um_nominal": cfg.he_pixel_size_um, "spec": asdict(transform), "tissue": tissue,
        "synthetic": True}, indent=2))
    (truth / "world.json").write_text(json.dumps({"world": world, **cfg.worlds[world].model_dump()}, indent=2))


def synthesize_reference(path: str | Path, tissue: str, n_cells: int, seed: int, config: SyntheticConfig,
                         panel_genes: int | None = None, world: str = "simple") -> Path:
    """A per-tissue single-cell atlas (.h5ad): integer counts, fine labels in obs['cell_type'], batch-shifted.

    ``panel_genes``: the slides' panel size (filler genes included), so the atlas measures them too.
    A realistic ``world`` leaves some of the slides' categories out of the atlas and names some fine
    labels as public atlases do (Cell Ontology names).
    """
    cfg = config
    atlas = cfg.worlds[world].atlas
    programs = build_programs(cfg, panel_genes)
    rng = np.random.default_rng([seed, 7, sum(map(ord, tissue))])
    comp = cfg.tissues[tissue].composition
    missing = set(atlas.missing_categories.get(tissue, []))
    present = sorted({c for region in comp.values() for c in region} - missing)
    labels = [lab for c in present for lab in cfg.fine_labels[c].get(tissue, cfg.fine_labels[c]["default"])]
    weights = np.sqrt(np.array([max(sum(r.get(programs.label_category[lab], 0) for r in comp.values()), 0.02) for lab in labels]))
    per_label = np.maximum(40, np.round(n_cells * weights / weights.sum())).astype(int)
    fine = np.repeat(np.array(labels), per_label)
    rng.shuffle(fine)
    counts = sample_reference_counts(programs, fine, target_total=900, rng=rng)
    names = atlas.label_names
    fine = np.array([names.get(lab, lab) for lab in fine])
    adata = ad.AnnData(X=sp.csr_matrix(counts), obs={"cell_type": fine, "sample": np.full(len(fine), "synthetic_atlas")},
                       var={"gene_symbol": list(programs.genes)})
    adata.obs_names = [f"{tissue}_ref_{i:06d}" for i in range(len(fine))]
    adata.var_names = list(programs.genes)
    adata.obs["cell_type"] = adata.obs["cell_type"].astype("category")
    adata.uns["synthetic"] = True
    adata.uns["tissue"] = tissue
    adata.uns["world"] = world
    with atomic_file(path) as tmp:
        adata.write_h5ad(tmp.with_suffix(".h5ad"))
        tmp.with_suffix(".h5ad").rename(tmp)
    return Path(path)


def synthesize_cohort(out: str | Path, size: str, config: SyntheticConfig, categories: CategorySystem, seed: int = 0,
                      progress: Progress = _noop, xoa: str | None = None, quirks: tuple[str, ...] = (),
                      world: str | None = None) -> Path:
    """All slides of a size, their tissues' reference atlases, and a manifest; returns the manifest path."""
    cfg = config
    if size not in cfg.sizes:
        raise ConfigError("synthetic.yaml", "sizes", f"unknown synthetic size {size!r}", f"use one of {', '.join(cfg.sizes)}")
    world = _world_name(cfg, size, world)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, (slide_id, tissue) in enumerate(cfg.sizes[size].slides):
        ref = out / "references" / f"{tissue}.h5ad"
        if not ref.exists():
            progress(f"reference atlas for {tissue}")
            synthesize_reference(ref, tissue, cfg.reference_cells[size], seed, cfg, cfg.sizes[size].panel_genes,
                                 world)
        slide = synthesize_slide(out / "slides", slide_id, tissue, size, seed + i, cfg, categories, progress=progress,
                                 xoa=xoa, quirks=quirks, world=world)
        entries.append({
            "slide_id": slide_id, "tissue": tissue,
            "xenium_dir": str(slide.xenium_dir.relative_to(out)), "he_image": str(slide.he_image.relative_to(out)),
            "alignment_csv": str(slide.alignment_csv.relative_to(out)), "reference": str(ref.relative_to(out)),
            "synthetic": True,
        })
    manifest = out / "manifest.yaml"
    with atomic_file(manifest) as tmp:
        tmp.write_text(f"# SYNTHETIC slides generated by `sthelar synth` (world: {world}); paths relative to this file.\n"
                       + yaml.safe_dump({"slides": entries}, sort_keys=False))
    return manifest
