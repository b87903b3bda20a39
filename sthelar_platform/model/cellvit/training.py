"""Training with resumable atomic checkpoints, early stopping and a clear stop on a NaN loss.

Checkpoints hold only tensors and plain values, so ``torch.load(..., weights_only=True)``
reads them: ``last.pt`` after every good epoch (the resume point) and ``best.pt`` at the
best validation loss. A NaN loss stops training and leaves both untouched.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from sthelar_platform.core.errors import InputError
from sthelar_platform.model.cellvit.data import PatchDataset
from sthelar_platform.model.cellvit.losses import cellvit_loss
from sthelar_platform.model.cellvit.model import CellViT


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainSettings:
    epochs: int = 10
    batch_size: int = 8
    lr: float = 3e-4
    weight_decay: float = 1e-4
    patience: int = 5
    seed: int = 0
    device: str = "cpu"
    amp: bool = True                      # CUDA: float16 autocast; CPU: bfloat16 where the CPU has it natively
    loss_weights: dict[str, float] = field(default_factory=dict)
    max_batches_per_epoch: int | None = None
    max_val_batches: int | None = None
    freeze_encoder_epochs: int = 0        # pretrained encoder kept fixed for the first epochs
    background_weight: float = 1.0        # NT cross-entropy weight of background pixels (cell classes average 1)
    window_px: int | None = None          # train on windows of each patch (more, cheaper steps); None: whole patches
    lr_schedule: str = "constant"         # constant | cosine (decays to 0 over ``epochs``, step by step)
    cell_weight_power: float = 1.0        # cell head: class weights = the pixel class weights ** this (0: unweighted)


@dataclass
class TrainResult:
    epochs_run: int
    best_epoch: int
    best_val_loss: float
    history: list[dict]
    stopped_early: bool
    resumed_from: int | None


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def save_checkpoint(path: Path, payload: dict) -> None:
    """Write to a temporary sibling, then rename: a killed run never leaves a torn checkpoint."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint dict, loaded with ``weights_only=True``; an unreadable file is an InputError."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "checkpoint file does not exist", "check the path, or train from scratch")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises several types for a damaged file
        raise InputError(path, f"not a readable checkpoint ({type(exc).__name__}: {str(exc)[:200]})",
                         "delete it and train again, or point to another checkpoint") from exc


def load_weights(model: CellViT, path: str | Path) -> dict:
    """Load a checkpoint's weights; a shape mismatch (e.g. another number of classes) is a clear error."""
    ckpt = load_checkpoint(path)
    apply_weights(model, ckpt, path)
    return ckpt


def apply_weights(model: CellViT, ckpt: dict, path: str | Path) -> None:
    """Load a checkpoint's weights into ``model``; any shape or key mismatch is an InputError."""
    state = ckpt.get("model", ckpt)
    own = model.state_dict()
    bad = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in state.items()
           if k in own and tuple(v.shape) != tuple(own[k].shape)]
    missing = sorted(set(own) - set(state))
    if bad or missing:
        detail = "; ".join(bad[:3]) or f"missing {missing[:3]}"
        raise InputError(path, f"checkpoint does not fit this model ({detail})",
                         "use a checkpoint trained with the same grouping (number of classes), tissues and model size")
    model.load_state_dict(state)


def cpu_bf16_supported() -> bool:
    """Whether this CPU runs bfloat16 natively (AVX512-BF16 / AMX): autocast there is ~2x faster, elsewhere slower."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_for(settings: TrainSettings) -> torch.autocast:
    """Mixed precision for the device: float16 on CUDA, bfloat16 on a CPU with native support, else none."""
    if settings.device.startswith("cuda"):
        return torch.autocast("cuda", enabled=settings.amp)
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=settings.amp and cpu_bf16_supported())


def _to(batch: dict[str, torch.Tensor], device: str) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def learning_rate(settings: TrainSettings, epoch: int, batch: int, batches_per_epoch: int) -> float:
    """The step's learning rate; a function of the position alone, so a resumed run continues the same curve."""
    if settings.lr_schedule == "constant":
        return settings.lr
    if settings.lr_schedule != "cosine":
        raise ValueError(f"unknown lr_schedule {settings.lr_schedule!r}; known: constant, cosine")
    done = (epoch + batch / max(batches_per_epoch, 1)) / max(settings.epochs, 1)
    return settings.lr * 0.5 * (1 + math.cos(math.pi * min(done, 1.0)))


def cell_class_weights(class_weights: torch.Tensor | None, power: float) -> torch.Tensor | None:
    """The cell head's CE weights: the cell classes' pixel weights raised to ``power``, mean 1."""
    if class_weights is None:
        return None
    w = class_weights[1:].float() ** power
    return w / w.mean()


def _run_epoch(model, loader, settings, class_weights, cell_weights=None, optimizer=None, scaler=None,
               epoch: int = 0) -> dict[str, float]:
    train = optimizer is not None
    model.train(train)
    totals: dict[str, float] = {}
    n = 0
    use_scaler = scaler is not None and settings.amp and settings.device.startswith("cuda")
    limit = settings.max_batches_per_epoch if train else settings.max_val_batches
    for b, batch in enumerate(loader):
        if limit and b >= limit:
            break
        batch = _to(batch, settings.device)
        with torch.set_grad_enabled(train), autocast_for(settings):
            out = model(batch["image"], batch.get("inst"))
            loss, parts = cellvit_loss({k: v.float() for k, v in out.items()}, batch, settings.loss_weights,
                                       class_weights, cell_weights)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise TrainingDiverged(f"loss is {value} at batch {b} ({parts}); the last good checkpoint is kept")
        if train:
            steps = min(len(loader), limit) if limit else len(loader)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(settings, epoch, b, steps)
            optimizer.zero_grad(set_to_none=True)
            if use_scaler:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
        k = len(batch["image"])
        n += k
        totals["loss"] = totals.get("loss", 0.0) + value * k
        for name, v in parts.items():
            totals[name] = totals.get(name, 0.0) + v * k
    return {k: v / max(n, 1) for k, v in totals.items()} | {"n_patches": n}


def train(model: CellViT, train_ds: PatchDataset, val_ds: PatchDataset, out_dir: Path, settings: TrainSettings,
          class_weights: torch.Tensor | None = None, on_epoch: Callable[[dict], None] | None = None,
          meta: dict | None = None) -> TrainResult:
    """Train, resuming from ``out_dir/last.pt`` when it exists.

    ``meta`` (class names, tissues, magnification...) is stored in both checkpoints so a
    checkpoint alone is enough to rebuild and use the model.
    """
    meta = dict(meta or {})
    out_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(settings.seed)
    model.to(settings.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    scaler = torch.amp.GradScaler("cuda") if settings.device.startswith("cuda") and settings.amp else None
    history: list[dict] = []
    start, best, best_epoch, resumed = 0, float("inf"), -1, None
    last = out_dir / "last.pt"
    if last.exists():
        ckpt = load_weights(model, last)
        optimizer.load_state_dict(ckpt["optimizer"])
        start, best, best_epoch = int(ckpt["epoch"]) + 1, float(ckpt["best_val_loss"]), int(ckpt["best_epoch"])
        history = list(ckpt["history"])
        torch.set_rng_state(ckpt["torch_rng"])
        resumed = start
    cw = class_weights.clone().to(settings.device) if class_weights is not None else None
    if cw is not None:
        cw[0] = settings.background_weight
    cell_w = cell_class_weights(cw, settings.cell_weight_power)  # once per run, not per batch
    gen = torch.Generator().manual_seed(settings.seed)
    stopped = False
    epoch = start - 1
    for epoch in range(start, settings.epochs):
        t0 = time.perf_counter()
        train_ds.set_epoch(epoch)
        for p in model.encoder.parameters():
            p.requires_grad_(epoch >= settings.freeze_encoder_epochs)
        gen.manual_seed(settings.seed + epoch)
        loader = DataLoader(train_ds, batch_size=settings.batch_size, shuffle=True, generator=gen, num_workers=0)
        tr = _run_epoch(model, loader, settings, cw, cell_w, optimizer, scaler, epoch)
        with torch.no_grad():
            va = _run_epoch(model, DataLoader(val_ds, batch_size=settings.batch_size), settings, cw, cell_w)
        row = {"epoch": epoch, "train_loss": tr["loss"], "val_loss": va["loss"], "seconds": time.perf_counter() - t0,
               "patches_per_s": tr["n_patches"] / max(time.perf_counter() - t0, 1e-9),
               **{f"train_{k}": v for k, v in tr.items() if k not in ("loss", "n_patches")}}
        history.append(row)
        improved = va["loss"] < best
        if improved:
            best, best_epoch = va["loss"], epoch
        payload = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                   "best_val_loss": best, "best_epoch": best_epoch, "history": history,
                   "torch_rng": torch.get_rng_state(), "config": model.cfg.to_dict(), "meta": meta}
        if improved:
            save_checkpoint(out_dir / "best.pt", {"model": model.state_dict(), "epoch": epoch,
                                                  "config": model.cfg.to_dict(), "val_loss": best, "meta": meta})
        save_checkpoint(last, payload)
        if on_epoch:
            on_epoch(row)
        if epoch - best_epoch >= settings.patience:
            stopped = True
            break
    return TrainResult(epochs_run=epoch + 1 - start, best_epoch=best_epoch, best_val_loss=best, history=history,
                       stopped_early=stopped, resumed_from=resumed)
