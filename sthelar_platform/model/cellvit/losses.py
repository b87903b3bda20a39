"""CellViT's losses: focal Tversky + Dice on NP, MSE + MSGE on HV, CE + Dice + focal Tversky on NT,
CE on the tissue type; with a cell head, class-weighted CE on each nucleus's type. Weights come from
config (``training.loss_weights``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sthelar_platform.model.cellvit.cells import instances, majority_types

DEFAULT_WEIGHTS = {"np_ft": 1.0, "np_dice": 1.0, "hv_mse": 2.5, "hv_msge": 8.0, "nt_ce": 0.5, "nt_dice": 0.2,
                   "nt_ft": 0.5, "tissue_ce": 0.1, "cell_ce": 1.0}


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Soft Dice loss over classes (softmax logits, integer targets)."""
    probs = logits.softmax(1)
    onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).float()
    inter = (probs * onehot).sum((0, 2, 3))
    denom = probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    return 1 - ((2 * inter + eps) / (denom + eps)).mean()


def focal_tversky_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.7, beta: float = 0.3,
                       gamma: float = 4 / 3, eps: float = 1e-6) -> torch.Tensor:
    """Focal Tversky loss: weighs missed pixels (alpha) over false alarms (beta)."""
    probs = logits.softmax(1)
    onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).float()
    tp = (probs * onehot).sum((0, 2, 3))
    fn = ((1 - probs) * onehot).sum((0, 2, 3))
    fp = (probs * (1 - onehot)).sum((0, 2, 3))
    tversky = (tp + eps) / (tp + alpha * fn + beta * fp + eps)
    return ((1 - tversky) ** (1 / gamma)).mean()


def _normalised_sobel(size: int = 5) -> torch.Tensor:
    """HoVer-Net's 5x5 gradient kernel along x: offset / squared distance (0 at the centre)."""
    r = torch.arange(size, dtype=torch.float32) - size // 2
    y, x = torch.meshgrid(r, r, indexing="ij")
    return x / (x * x + y * y).clamp_min(1e-15)


def _sobel(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    k = _normalised_sobel().to(device=x.device, dtype=x.dtype)
    h = F.conv2d(x[:, :1], k.view(1, 1, 5, 5), padding=2)  # d/dx of the horizontal map
    v = F.conv2d(x[:, 1:], k.t().reshape(1, 1, 5, 5), padding=2)  # d/dy of the vertical map
    return h, v


def msge_loss(pred: torch.Tensor, target: torch.Tensor, nuclei: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the HV maps' gradients, inside nuclei only."""
    ph, pv = _sobel(pred)
    th, tv = _sobel(target)
    mask = nuclei.unsqueeze(1).float()
    err = (ph - th) ** 2 * mask + (pv - tv) ** 2 * mask
    return err.sum() / (2 * mask.sum() + 1e-6)


def cellvit_loss(out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], weights: dict[str, float] | None = None,
                 class_weights: torch.Tensor | None = None,
                 cell_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """CellViT's weighted sum over NP, HV, NT and tissue heads, with each part for logging."""
    w = {**DEFAULT_WEIGHTS, **(weights or {})}
    hv_pred = torch.tanh(out["hv"])
    parts = {
        "np_ft": focal_tversky_loss(out["np"], batch["np"]),
        "np_dice": dice_loss(out["np"], batch["np"]),
        "hv_mse": F.mse_loss(hv_pred, batch["hv"]),
        "hv_msge": msge_loss(hv_pred, batch["hv"], batch["np"]),
        "tissue_ce": F.cross_entropy(out["tissue"], batch["tissue"]),
    }
    if "nt" in out:
        parts |= {"nt_ce": F.cross_entropy(out["nt"], batch["nt"], weight=class_weights),
                  "nt_dice": dice_loss(out["nt"], batch["nt"]), "nt_ft": focal_tversky_loss(out["nt"], batch["nt"])}
    if "cell" in out:
        parts["cell_ce"] = cell_loss(out["cell"], batch, cell_weights)
    total = torch.stack([w[k] * v for k, v in parts.items()]).sum()
    return total, {k: float(v.detach()) for k, v in parts.items()}


def cell_loss(logits: torch.Tensor, batch: dict[str, torch.Tensor], weights: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of each nucleus's type (``weights``: one per cell class).

    A nucleus counts once whatever its size, so small and rare classes count; nuclei without a
    class pixel, and batches without nuclei, add nothing.
    """
    target = majority_types(batch["nt"], instances(batch["inst"]), logits.shape[1] + 1) - 1
    if not bool((target >= 0).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, target, weight=weights, ignore_index=-1)
