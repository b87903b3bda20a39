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
    def __init__(self, records: list[PatchRecord], augment: bool = False, seed: int = 0):
        if not records:
            raise InputError(None, "the dataset split holds no patches",
                             "check the split fractions and the quality filter in config/training.yaml")
        self.records = records
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch  # a different, still reproducible, augmentation every epoch

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        r = self.records[i]
        bgr = cv2.imread(str(r.image), cv2.IMREAD_COLOR)
        if bgr is None:
            raise InputError(r.image, "patch image missing or unreadable", "materialize the training dataset again")
        rgb = bgr[..., ::-1]
        lab = load_labels(r.labels)
        inst, types = lab["inst_map"], lab["type_map"]
        if self.augment:
            rng = np.random.default_rng((self.seed, self.epoch, i))
            rgb, inst, types = geometric([rgb, inst, types], rng)
            rgb = hed_jitter(rgb, rng)
        t = patch_targets(inst, types)
        return {"image": to_tensor(rgb), "np": torch.from_numpy(t["np"]), "hv": torch.from_numpy(t["hv"]),
                "nt": torch.from_numpy(t["nt"]), "tissue": torch.tensor(r.tissue), "inst": torch.from_numpy(inst.astype(np.int64))}
