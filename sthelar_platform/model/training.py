"""CellViT training on the cross-slide training dataset, one model per class grouping.

Training runs in a work folder keyed by everything that defines the run (dataset version,
schedule, code): a killed run resumes from its ``last.pt`` there, while a changed dataset or
schedule starts afresh. Only a finished run publishes ``best.pt`` with its model card.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from sthelar_platform.core.config.training import ScheduleConfig, TrainingConfig
from sthelar_platform.core.errors import ConfigError, InputError, require_stage_output
from sthelar_platform.core.hashing import sha256_text
from sthelar_platform.core.warehouse import CellViTLayoutFolder, ModelFolder
from sthelar_platform.model.cellvit.data import NOMINAL_UM_PER_PX, PatchDataset, PatchRecord
from sthelar_platform.model.cellvit.model import build_model
from sthelar_platform.model.cellvit.official import (
    initialise_from_official,
    is_official,
    official_magnification,
    official_size,
)
from sthelar_platform.model.cellvit.training import TrainSettings, apply_weights, load_checkpoint, train


def grouping_dir(dataset: Path, cfg: TrainingConfig, grouping: str, magnification: str | None = None) -> Path:
    """The dataset folder of one grouping at ``magnification`` (default: the configured one)."""
    return dataset / (magnification or cfg.dataset.magnification) / grouping


def dataset_classes(gdir: Path) -> tuple[list[str], list[float]]:
    """Class names (background excluded) and the class weights, background first."""
    w = json.loads(require_stage_output(CellViTLayoutFolder(gdir).class_weights, "training_dataset").read_text())
    return list(w["classes"][1:]), [float(v) for v in w["weights"]]


def dataset_tissues(gdir: Path) -> list[str]:
    """Tissue names present in a grouping's dataset (the tissue head's classes)."""
    return sorted(pd.read_csv(require_stage_output(CellViTLayoutFolder(gdir).types, "training_dataset"))["type"]
                  .astype(str).unique())


def split_records(gdir: Path, split: str, tissues: list[str]) -> list[PatchRecord]:
    """The patches of one split; an empty split is an InputError naming the fix."""
    folder = CellViTLayoutFolder(gdir)
    splits = pd.read_csv(require_stage_output(folder.splits, "training_dataset"))
    types = pd.read_csv(folder.types).set_index("img")["type"].astype(str)
    index = {t: i for i, t in enumerate(tissues)}
    names = splits.loc[splits["split"] == split, "img"].tolist()
    if not names:
        raise InputError(folder.splits, f"the {split!r} split holds no patches",
                         "add slides or change dataset.fractions / dataset.split in sthelar_platform/config/training.yaml (a small "
                         "slide may hold too few 20x patches: set the schedule's magnification to 40x)")
    return [PatchRecord(folder.images / n, folder.label(n.removesuffix(".png")), index.get(types[n], 0)) for n in names]


def _schedule(cfg: TrainingConfig, device: str) -> ScheduleConfig:
    kind = "cuda" if device.startswith("cuda") else "cpu"
    if kind not in cfg.training.schedules:
        raise ConfigError("training.yaml", f"training.schedules.{kind}", f"no training schedule for {kind}",
                          "add one (see the packaged training.yaml)")
    return cfg.training.schedules[kind]


def training_magnification(cfg: TrainingConfig, device: str) -> str:
    """The patches the device's schedule trains on (the CPU schedule may pick 20x: 4x fewer pixels per cell)."""
    return _schedule(cfg, device).magnification or cfg.dataset.magnification


# schedule keys that shape the model rather than its training: the per-nucleus type head
# (``cellvit/cells.py``) and the NT branch
MODEL_KEYS = ("cell_head", "type_maps")


def model_options(cfg: TrainingConfig, device: str) -> dict[str, bool]:
    """The schedule's model switches (``MODEL_KEYS``)."""
    s = _schedule(cfg, device)
    return {k: bool(getattr(s, k)) for k in MODEL_KEYS}


def schedule_for(cfg: TrainingConfig, device: str) -> tuple[str, TrainSettings]:
    """Model size and settings for the device class (``cpu`` or ``cuda``) from training.yaml."""
    t = cfg.training
    s = _schedule(cfg, device).model_dump(exclude={"size", "magnification", *MODEL_KEYS})
    settings = TrainSettings(**s, weight_decay=float(t.weight_decay), seed=int(t.seed), device=device,
                             amp=bool(t.amp), loss_weights=dict(t.loss_weights))
    return _schedule(cfg, device).size, settings


def run_key(*parts: object) -> str:
    """A short stable hash naming a training run's work folder."""
    return sha256_text(json.dumps([str(p) for p in parts]))[:16]


def loss_curve_png(history: list[dict], path: Path) -> Path:
    """Training and validation loss per epoch as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3), dpi=100)
    ep = [h["epoch"] for h in history]
    ax.plot(ep, [h["train_loss"] for h in history], "o-", label="train")
    ax.plot(ep, [h["val_loss"] for h in history], "s-", label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend(frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def train_cellvit(dataset: Path, grouping: str, cfg: TrainingConfig, device: str, work_root: Path, out: Path,
                  dataset_version: str, code_version: str, root: Path | None = None,
                  on_epoch: Callable[[dict], None] | None = None) -> tuple[dict, list[dict]]:
    """Train one grouping's model; writes ``best.pt``, ``model.json``, ``history.csv`` and ``loss_curve.png``.

    Returns the model card and the per-epoch rows (resumed epochs included).
    """
    tcfg = cfg.training
    size, settings = schedule_for(cfg, device)
    mag = training_magnification(cfg, device)
    init = tcfg.init_checkpoint
    init_path = None if not init else Path(init) if Path(init).is_absolute() or root is None else Path(root) / init
    init_ckpt = load_checkpoint(init_path) if init_path else None  # InputError on a missing or corrupt file
    official = init_ckpt is not None and is_official(init_ckpt)
    if init_ckpt is not None and init_path is not None:
        if official:
            size = official_size(init_ckpt, init_path)  # fine-tune the architecture the weights belong to
            mag = official_magnification(init_ckpt, init_path) or mag  # ... at the magnification they learned
        else:
            mag = (init_ckpt.get("meta") or {}).get("magnification") or mag
    if init_ckpt is not None and init_path is not None and mag not in cfg.dataset.magnifications:
        raise InputError(init_path, f"the checkpoint was trained at {mag}, which the dataset does not export",
                         f"add {mag} to dataset.magnifications in sthelar_platform/config/training.yaml")
    gdir = grouping_dir(dataset, cfg, grouping, mag)
    classes, weights = dataset_classes(gdir)
    tissues = dataset_tissues(gdir)
    train_ds = PatchDataset(split_records(gdir, "train", tissues), augment=bool(tcfg.augment), seed=int(tcfg.seed),
                            window_px=settings.window_px)
    val_ds = PatchDataset(split_records(gdir, "val", tissues))
    meta = {"grouping": grouping, "classes": classes, "tissues": tissues, "magnification": mag,
            "um_per_px": NOMINAL_UM_PER_PX.get(mag), "size": size, "dataset_version": dataset_version}
    if init_ckpt is not None:
        if official:
            meta["init_official"] = init_ckpt["arch"]
        settings.freeze_encoder_epochs = tcfg.freeze_encoder_epochs
    torch.manual_seed(settings.seed)
    options = model_options(cfg, device)
    model = build_model(size, n_types=len(classes) + 1, n_tissues=len(tissues), **options)
    work = work_root / f"cellvit_{grouping}-{run_key(dataset_version, size, mag, settings, init, code_version, options)}"
    if init_ckpt is not None and init_path is not None and not ModelFolder(work).last.exists():
        if official:
            meta["reinitialised"] = initialise_from_official(model, init_ckpt, init_path)
        else:
            apply_weights(model, init_ckpt, init_path)  # InputError on a mismatched checkpoint
    result = train(model, train_ds, val_ds, work, settings, torch.tensor(weights, dtype=torch.float32), on_epoch, meta)
    best, folder = ModelFolder(work).best, ModelFolder(out)
    if not best.exists():
        raise InputError(work, "training finished without a best checkpoint", "check the validation split")
    shutil.copy2(best, folder.best)  # the work folder keeps its copy until the asset publishes
    with folder.history.open("w", newline="") as fh:
        keys = sorted({k for h in result.history for k in h}, key=lambda k: (k != "epoch", k))
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(result.history)
    loss_curve_png(result.history, folder.loss_curve)
    card = {**meta, "n_parameters": int(sum(p.numel() for p in model.parameters())), "device": device,
            "settings": {k: v for k, v in vars(settings).items() if k != "loss_weights"},
            "loss_weights": settings.loss_weights, "init_checkpoint": init,
            "n_train_patches": len(train_ds.records), "n_train_samples": len(train_ds), "n_val_patches": len(val_ds),
            "epochs_run": len(result.history),
            "resumed_from_epoch": result.resumed_from, "best_epoch": result.best_epoch,
            "best_val_loss": result.best_val_loss, "stopped_early": result.stopped_early,
            "final_train_loss": result.history[-1]["train_loss"] if result.history else float("nan"),
            "train_patches_per_s": float(np.mean([h["patches_per_s"] for h in result.history])) if result.history else 0.0,
            "work_dir": str(work)}
    folder.card.write_text(json.dumps(card, indent=2, default=str))
    return card, result.history
