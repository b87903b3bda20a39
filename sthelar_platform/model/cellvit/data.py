"""Patches from CellViT-style export folders as torch tensors, with stain and geometric augmentation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from sthelar_platform.core.errors import InputError
from sthelar_platform.model.cellvit.targets import patch_targets
from sthelar_platform.tiling.patches import load_labels

MEAN = np.array([0.5, 0.5, 0.5], np.float32)
STD = np.array([0.5, 0.5, 0.5], np.float32)
NOMINAL_UM_PER_PX = {"40x": 0.25, "20x": 0.5}  # the pixel size a model of each magnification was trained at


@dataclass(frozen=True)
class PatchRecord:
    image: Path
    labels: Path
    tissue: int


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 normalized as the model expects."""
    return torch.from_numpy(((rgb.astype(np.float32) / 255 - MEAN) / STD).transpose(2, 0, 1).copy())


def hed_jitter(rgb: np.ndarray, rng: np.random.Generator, sigma: float = 0.05, bias: float = 0.05) -> np.ndarray:
    """Stain augmentation: scale and shift each of the hematoxylin / eosin / DAB channels."""
    from skimage.color import hed2rgb, rgb2hed

    hed = rgb2hed(rgb)
    hed = hed * rng.uniform(1 - sigma, 1 + sigma, 3) + rng.uniform(-bias, bias, 3) * hed.std((0, 1))
    return np.clip(hed2rgb(hed) * 255, 0, 255).astype(np.uint8)


def geometric(arrays: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """The same random flip / quarter turn for the image and its masks (the HV targets follow)."""
    k = int(rng.integers(4))
    flip = bool(rng.integers(2))
    out = []
    for a in arrays:
        a = np.rot90(a, k, axes=(0, 1))
        out.append(np.ascontiguousarray(a[:, ::-1] if flip else a))
    return out


class PatchDataset(Dataset):
    """Patches as training samples; with ``window_px`` each patch is cut into its windows (side / window)^2.

    Windows keep every pixel in every epoch while giving a CPU more, cheaper optimizer steps. The
    decoded patches are then kept in memory (about 0.5 MB each), as each is read once per window.
    """

    def __init__(self, records: list[PatchRecord], augment: bool = False, seed: int = 0, window_px: int | None = None):
        if not records:
            raise ValueError("a PatchDataset needs at least one patch")  # split_records names the empty split first
        self.records = records
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self.window = window_px
        self._decoded: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.per_patch, self._side = 1, None
        if window_px:
            side = self._read(0)[0].shape[0]
            if window_px % 16 or side % window_px:
                raise InputError(records[0].image, f"window_px {window_px} must divide the {side} px patches and be a "
                                 "multiple of 16", "use 64 or 128 (or null) in the training schedule")
            self.per_patch, self._side = (side // window_px) ** 2, side

    def __len__(self) -> int:
        return len(self.records) * self.per_patch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch  # a different, still reproducible, augmentation every epoch

    def _read(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if k in self._decoded:
            return self._decoded[k]
        r = self.records[k]
        bgr = cv2.imread(str(r.image), cv2.IMREAD_COLOR)
        if bgr is None:
            raise InputError(r.image, "patch image missing or unreadable", "materialize the training dataset again")
        lab = load_labels(r.labels)
        decoded = (np.ascontiguousarray(bgr[..., ::-1]), lab["inst_map"], lab["type_map"])
        if self._side is not None and bgr.shape[:2] != (self._side, self._side):
            raise InputError(r.image, f"patch is {bgr.shape[1]}x{bgr.shape[0]} px, unlike the split's first patch",
                             "export every patch of a dataset at one size")
        if self.window:
            self._decoded[k] = decoded
        return decoded

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        k = i // self.per_patch
        r = self.records[k]
        rgb, inst, types = self._read(k)
        if self.window:
            per_row = rgb.shape[1] // self.window
            y, x = divmod(i % self.per_patch, per_row)
            win = np.s_[y * self.window:(y + 1) * self.window, x * self.window:(x + 1) * self.window]
            rgb, inst, types = rgb[win], inst[win], types[win]
        if self.augment:
            rng = np.random.default_rng((self.seed, self.epoch, i))
            rgb, inst, types = geometric([rgb, inst, types], rng)
            rgb = hed_jitter(rgb, rng)
        t = patch_targets(inst, types)
        return {"image": to_tensor(rgb), "np": torch.from_numpy(t["np"]), "hv": torch.from_numpy(t["hv"]),
                "nt": torch.from_numpy(t["nt"]), "tissue": torch.tensor(r.tissue), "inst": torch.from_numpy(inst.astype(np.int64))}
