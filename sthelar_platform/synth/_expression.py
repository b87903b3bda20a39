"""Expression programs per fine cell type, shared by the slides and the reference atlases.

Programs come from a fixed biology seed so that every slide and atlas of a cohort
draws from the same biology; atlases add a gene-wise batch shift and overdispersion.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.spatial import cKDTree

from sthelar_platform.core.config.synthetic import SyntheticConfig, WorldExpression
from sthelar_platform.core.errors import ConfigError

BIOLOGY_SEED = 20260101
CELL_BLOCK = 20000  # cells per block of counts: the only dense (block x panel) array in memory
# Extra genes measured in the atlases but absent from the Xenium panel.
HOUSEKEEPING = ["ACTB", "GAPDH", "B2M", "MALAT1", "RPLP0", "RPS18", "EEF1A1", "TPT1", "FTL", "FTH1",
                "UBC", "HSP90AB1", "PPIA", "TMSB4X", "MT-CO1", "NEAT1", "CALM2", "YBX1", "PABPC1", "HNRNPA1"]
N_EXTRA_GENES = 140


@dataclass(frozen=True)
class Programs:
    genes: tuple[str, ...]  # panel genes first, then atlas-only genes
    n_panel: int
    labels: tuple[str, ...]  # fine labels
    label_category: dict[str, str]
    mean: np.ndarray  # (n_labels, n_genes) relative expression

    @property
    def panel(self) -> tuple[str, ...]:
        return self.genes[: self.n_panel]


def _filler_genes(synth_cfg: SyntheticConfig, n: int, n_labels: int) -> tuple[list[str], np.ndarray]:
    """Panel genes beyond the markers (a Prime 5K-sized panel): names and (n_labels, n) relative expression.

    Log-normal base expression with a wide spread (most genes seen in a few cells, a few everywhere),
    and a share of genes raised in a few labels, as whole-transcriptome-like panels have. Drawn from their
    own seed, so marker-only panels are unchanged.
    """
    f = synth_cfg.filler_genes
    if f is None:
        raise ConfigError("synthetic.yaml", "filler_genes", "a size asks for panel_genes but no filler genes are described",
                          "add filler_genes (prefix, median_expression, log_sd, label_specific_fraction)")
    rng = np.random.default_rng(BIOLOGY_SEED + 1)
    names = [f"{f.prefix}{i:05d}" for i in range(1, n + 1)]
    base = rng.lognormal(np.log(f.median_expression), f.log_sd, n)
    mean = np.tile(base, (n_labels, 1)) * rng.lognormal(0, 0.25, (n_labels, n))
    specific = np.flatnonzero(rng.random(n) < f.label_specific_fraction)
    for g in specific:
        up = rng.choice(n_labels, int(rng.integers(1, 4)), replace=False)
        mean[up, g] *= rng.uniform(4, 12, len(up))
    return names, mean


def build_programs(synth_cfg: SyntheticConfig, panel_genes: int | None = None) -> Programs:
    """The cohort's biology; ``panel_genes`` pads the marker panel with filler genes to that size."""
    markers: dict[str, list[str]] = synth_cfg.category_markers
    fine_markers: dict[str, list[str]] = synth_cfg.fine_markers
    shared: dict[str, list[str]] = synth_cfg.shared_markers
    panel = sorted({g for gs in markers.values() for g in gs} | {g for gs in fine_markers.values() for g in gs} | set(shared))
    extra = HOUSEKEEPING + [f"SYNG{i:04d}" for i in range(N_EXTRA_GENES - len(HOUSEKEEPING))]
    genes = tuple(panel + extra)
    gidx = {g: i for i, g in enumerate(genes)}
    label_category = {}
    for cat, per_tissue in synth_cfg.fine_labels.items():
        for tissue_labels in per_tissue.values():
            for lab in tissue_labels:
                label_category[lab] = cat
    labels: tuple[str, ...] = tuple(sorted(label_category))
    rng = np.random.default_rng(BIOLOGY_SEED)
    base = rng.lognormal(np.log(0.05), 0.7, len(genes))
    base[len(panel):len(panel) + len(HOUSEKEEPING)] = rng.uniform(2, 8, len(HOUSEKEEPING))
    mean = np.tile(base, (len(labels), 1)) * rng.lognormal(0, 0.25, (len(labels), len(genes)))
    for li, lab in enumerate(labels):
        cat = label_category[lab]
        for g in markers[cat]:
            mean[li, gidx[g]] = rng.uniform(3, 8)
        for g in fine_markers.get(lab, []):
            mean[li, gidx[g]] = rng.uniform(3, 8)
        for g, cats in shared.items():
            if cat in cats:
                mean[li, gidx[g]] = rng.uniform(1.5, 4)
        # A little extra variability on atlas-only genes keeps the atlases informative beyond the panel.
        sel = rng.choice(np.arange(len(panel) + len(HOUSEKEEPING), len(genes)), 6, replace=False)
        mean[li, sel] = rng.uniform(1, 4, len(sel))
    n_fill = max(0, (panel_genes or 0) - len(panel))
    if n_fill:
        names, fill = _filler_genes(synth_cfg, n_fill, len(labels))
        clash = set(names) & set(genes)
        if clash:
            raise ValueError(f"filler gene names clash with real ones: {sorted(clash)[:3]}")
        genes = tuple(panel + names + extra)
        mean = np.concatenate([mean[:, : len(panel)], fill, mean[:, len(panel):]], axis=1)
    return Programs(genes=genes, n_panel=len(panel) + n_fill, labels=labels, label_category=label_category, mean=mean)


@dataclass(frozen=True)
class SlideMixing:
    """Where a realistic slide's expected counts depart from each cell's own program.

    Real Xenium cells carry transcripts of their neighbours (segmentation spillover), some are two
    cells segmented as one (doublets), every cell picks up ambient RNA, and a slide's genes are
    shifted against the atlas (batch).
    """

    neighbours: np.ndarray        # (n, k) nearest other cells, the spillover sources
    partner: np.ndarray           # (n,) the neighbour a doublet merged with; -1: not a doublet
    gene_factor: np.ndarray       # (n_panel,) the slide's batch shift
    spillover: float
    ambient: float

    @property
    def doublet(self) -> np.ndarray:
        return self.partner >= 0


DOUBLET_TOTAL = 1.7  # a doublet's transcripts against a single cell's (two cells, partly outside the mask)


def slide_mixing(world: WorldExpression, x_um: np.ndarray, y_um: np.ndarray, n_panel: int,
                 rng: np.random.Generator) -> SlideMixing | None:
    """A realistic world's mixing for the cells at (x, y); None in a world without any."""
    if not (world.spillover_fraction or world.doublet_fraction or world.ambient_fraction or world.slide_batch_sd):
        return None
    n = len(x_um)
    k = min(world.spillover_neighbours, max(n - 1, 1))
    _, idx = cKDTree(np.column_stack([x_um, y_um])).query(np.column_stack([x_um, y_um]), k=k + 1)
    neighbours = np.asarray(idx).reshape(n, -1)[:, 1:] if n > 1 else np.zeros((n, 1), int)
    partner = np.where(rng.random(n) < world.doublet_fraction, neighbours[:, 0], -1) if n > 1 else np.full(n, -1)
    return SlideMixing(neighbours=neighbours, partner=partner,
                       gene_factor=rng.lognormal(0, world.slide_batch_sd, n_panel),
                       spillover=float(world.spillover_fraction), ambient=float(world.ambient_fraction))


def sample_panel_counts(programs: Programs, fine_labels: np.ndarray, target_total: float, less10: np.ndarray,
                        rng: np.random.Generator, mixing: SlideMixing | None = None) -> sp.csr_matrix:
    """Poisson counts over the panel genes, (n_cells, n_panel) int32 CSR, drawn in blocks of cells.

    Row-major block draws consume the generator exactly as one (n_cells, n_panel) draw would, so a
    slide's counts do not depend on the block size; only one block is ever dense. ``mixing`` (a
    realistic world) changes the expected counts, not how they are drawn.
    """
    return sp.vstack(list(_count_blocks(programs, fine_labels, target_total, less10, rng, mixing)), format="csr")


def _count_blocks(programs: Programs, fine_labels: np.ndarray, target_total: float, less10: np.ndarray,
                  rng: np.random.Generator, mixing: SlideMixing | None) -> Iterator[sp.csr_matrix]:
    lidx = np.searchsorted(np.array(programs.labels), fine_labels)
    label_mu = programs.mean[:, : programs.n_panel]
    label_total = label_mu.sum(1)[lidx]
    size = target_total / label_total * rng.lognormal(0, 0.3, len(lidx))
    size[less10] = rng.uniform(2, 8, less10.sum()) / label_total[less10]
    if mixing is None:
        for start in range(0, len(lidx), CELL_BLOCK):
            rows = slice(start, start + CELL_BLOCK)
            yield sp.csr_matrix(rng.poisson(label_mu[lidx[rows]] * size[rows, None]).astype(np.int32))
        return
    profile = label_mu * mixing.gene_factor[None, :]
    profile /= profile.sum(1, keepdims=True)
    ambient = np.bincount(lidx, minlength=len(profile)) @ profile / max(len(lidx), 1)
    total = label_total * size * np.where(mixing.doublet, DOUBLET_TOTAL, 1.0)
    own_share = 1 - mixing.spillover - mixing.ambient
    for start in range(0, len(lidx), CELL_BLOCK):
        rows = slice(start, start + CELL_BLOCK)
        mu = own_share * profile[lidx[rows]] + mixing.ambient * ambient[None, :]
        for j in range(mixing.neighbours.shape[1]):
            mu += mixing.spillover / mixing.neighbours.shape[1] * profile[lidx[mixing.neighbours[rows, j]]]
        partner = mixing.partner[rows]
        merged = partner >= 0
        mu[merged] = 0.5 * (mu[merged] + profile[lidx[partner[merged]]])
        yield sp.csr_matrix(rng.poisson(mu * total[rows, None]).astype(np.int32))


def sample_reference_counts(programs: Programs, fine_labels: np.ndarray, target_total: float,
                            rng: np.random.Generator, dispersion: float = 0.3, batch_sd: float = 0.35) -> np.ndarray:
    """Gamma-Poisson counts over all genes with a gene-wise batch shift, (n_cells, n_genes) int32."""
    lidx = np.searchsorted(np.array(programs.labels), fine_labels)
    batch = rng.lognormal(0, batch_sd, len(programs.genes))
    mu = programs.mean[lidx] * batch[None, :]
    mu *= (target_total / mu.sum(1) * rng.lognormal(0, 0.3, len(lidx)))[:, None]
    lam = rng.gamma(1 / dispersion, mu * dispersion)
    return rng.poisson(lam).astype(np.int32)
