"""Expression programs per fine cell type, shared by the slides and the reference atlases.

Programs come from a fixed biology seed so that every slide and atlas of a cohort
draws from the same biology; atlases add a gene-wise batch shift and overdispersion.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sthelar_platform.core.config import SyntheticConfig

BIOLOGY_SEED = 20260101
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


def build_programs(synth_cfg: SyntheticConfig) -> Programs:
    markers: dict[str, list[str]] = synth_cfg["category_markers"]
    fine_markers: dict[str, list[str]] = synth_cfg["fine_markers"]
    shared: dict[str, list[str]] = synth_cfg["shared_markers"]
    panel = sorted({g for gs in markers.values() for g in gs} | {g for gs in fine_markers.values() for g in gs} | set(shared))
    extra = HOUSEKEEPING + [f"SYNG{i:04d}" for i in range(N_EXTRA_GENES - len(HOUSEKEEPING))]
    genes = tuple(panel + extra)
    gidx = {g: i for i, g in enumerate(genes)}
    label_category = {}
    for cat, per_tissue in synth_cfg["fine_labels"].items():
        for labels in per_tissue.values():
            for lab in labels:
                label_category[lab] = cat
    labels = tuple(sorted(label_category))
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
    return Programs(genes=genes, n_panel=len(panel), labels=labels, label_category=label_category, mean=mean)


def sample_panel_counts(programs: Programs, fine_labels: np.ndarray, target_total: float, less10: np.ndarray,
                        rng: np.random.Generator) -> np.ndarray:
    """Poisson counts over the panel genes, (n_cells, n_panel) int32."""
    lidx = np.searchsorted(np.array(programs.labels), fine_labels)
    mu = programs.mean[lidx, : programs.n_panel]
    size = target_total / mu.sum(1) * rng.lognormal(0, 0.3, len(lidx))
    size[less10] = rng.uniform(2, 8, less10.sum()) / mu[less10].sum(1)
    return rng.poisson(mu * size[:, None]).astype(np.int32)


def sample_reference_counts(programs: Programs, fine_labels: np.ndarray, target_total: float,
                            rng: np.random.Generator, dispersion: float = 0.3, batch_sd: float = 0.35) -> np.ndarray:
    """Gamma-Poisson counts over all genes with a gene-wise batch shift, (n_cells, n_genes) int32."""
    lidx = np.searchsorted(np.array(programs.labels), fine_labels)
    batch = rng.lognormal(0, batch_sd, len(programs.genes))
    mu = programs.mean[lidx] * batch[None, :]
    mu *= (target_total / mu.sum(1) * rng.lognormal(0, 0.3, len(lidx)))[:, None]
    lam = rng.gamma(1 / dispersion, mu * dispersion)
    return rng.poisson(lam).astype(np.int32)
