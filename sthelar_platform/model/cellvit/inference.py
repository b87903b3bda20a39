"""A trained CellViT as a callable: checkpoint in, nucleus instances with types out.

A checkpoint written by ``training.train`` carries the model config and ``meta`` (class
names, tissues, magnification, µm per pixel), so it alone rebuilds the model. Used by the
evaluation, the whole-slide predictions and as a reference segmenter for the agreement QC.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from sthelar_platform.core.config.tiling import CellViTSegmenterConfig
from sthelar_platform.core.config.training import PostprocessConfig
from sthelar_platform.core.errors import ConfigError, InputError
from sthelar_platform.core.hashing import sha256_file
from sthelar_platform.model.cellvit.cells import instances
from sthelar_platform.model.cellvit.data import MEAN, NOMINAL_UM_PER_PX, STD
from sthelar_platform.model.cellvit.model import CellViT, CellViTConfig
from sthelar_platform.model.cellvit.official import is_official, load_official, official_meta
from sthelar_platform.model.cellvit.postprocess import instance_types, instances_from_maps
from sthelar_platform.model.cellvit.training import apply_weights, load_checkpoint


@dataclass
class TilePrediction:
    """One tile's post-processed prediction (instance ids 1..n; arrays indexed by id - 1)."""

    inst: np.ndarray            # (H, W) int32
    types: np.ndarray           # (n,) class index 1..C (0 = no foreground vote)
    centroids: np.ndarray       # (n, 2) x, y in tile pixels
    areas: np.ndarray           # (n,) pixels
    type_confidence: np.ndarray  # (n,) mean softmax probability of the chosen class
    tissue: int = 0
    tissue_probs: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def type_map(self) -> np.ndarray:
        return np.r_[0, self.types].astype(np.int32)[self.inst]


@dataclass
class LoadedModel:
    model: CellViT
    meta: dict
    device: str = "cpu"
    postprocess: dict = field(default_factory=dict)
    source: str | Path = "(a model in memory)"   # the checkpoint it was loaded from, named in errors

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.meta.get("classes", [f"class_{k}" for k in range(1, self.model.cfg.n_types)]))

    @property
    def postprocess_args(self) -> dict:
        """Post-processing settings at the model's magnification (a per-magnification setting picks its value)."""
        mag = self.meta.get("magnification") or "40x"
        return {k: (v.get(mag, v.get("40x")) if isinstance(v, dict) else v) for k, v in self.postprocess.items()}

    @torch.no_grad()
    def predict(self, rgb: np.ndarray) -> list[TilePrediction]:
        """Predict a batch (n, H, W, 3) uint8, H and W multiples of 16."""
        norm = self.meta.get("normalize") or {}
        mean = np.asarray(norm.get("mean", MEAN), np.float32)
        std = np.asarray(norm.get("std", STD), np.float32)
        x = torch.from_numpy(((rgb.astype(np.float32) / 255 - mean) / std).transpose(0, 3, 1, 2).copy())
        out, skips = self.model.maps(x.to(self.device))
        np_prob = out["np"].float().softmax(1)[:, 1].cpu().numpy()
        hv_raw = out["hv"].float()
        hv = (hv_raw if self.meta.get("hv_activation") == "identity" else torch.tanh(hv_raw)).cpu().numpy()
        nt_prob: np.ndarray | None = None
        if "nt" in out:
            nt_soft = out["nt"].float().softmax(1)
            nt_arg = nt_soft.argmax(1).cpu().numpy()
            nt_prob = nt_soft.cpu().numpy()
        else:  # a cell-head model without the NT branch: its head types every nucleus
            nt_arg = np.zeros(np_prob.shape, np.int64)
        tissue = out["tissue"].float().softmax(1).cpu().numpy()
        preds = []
        for i in range(len(rgb)):
            inst = instances_from_maps(np_prob[i], hv[i], **self.postprocess_args)
            types, xy = instance_types(inst, nt_arg[i], self.model.cfg.n_types)
            n = len(types)
            areas = np.bincount(inst.ravel(), minlength=n + 1)[1:]
            if not n:
                conf = np.zeros(0)
            elif self.model.cfg.cell_head or nt_prob is None:
                types, conf = self._cell_types([s[i:i + 1] for s in skips], inst)
            else:
                conf = self._pixel_vote_confidence(nt_prob[i], inst, types, areas)
            preds.append(TilePrediction(inst, types, xy, areas, conf, int(tissue[i].argmax()), tissue[i]))
        return preds

    def _cell_types(self, skips: list[torch.Tensor], inst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per instance 1..max: the cell head's class and its probability (0 for labels without pixels)."""
        cells = instances(torch.from_numpy(inst).to(self.device)[None])
        probs = self.model.classify_cells(skips, cells).float().softmax(1).cpu().numpy()
        n = int(inst.max())
        types, conf = np.zeros(n, int), np.zeros(n)
        label = cells.label.cpu().numpy() - 1
        types[label], conf[label] = probs.argmax(1) + 1, probs.max(1)
        return types, conf

    @staticmethod
    def _pixel_vote_confidence(nt_prob: np.ndarray, inst: np.ndarray, types: np.ndarray, areas: np.ndarray) -> np.ndarray:
        """Per instance (at least one): the mean NT probability of its voted class over its pixels."""
        chosen = nt_prob[types[np.maximum(inst - 1, 0)], np.arange(inst.shape[0])[:, None], np.arange(inst.shape[1])[None]]
        return np.bincount(inst.ravel(), weights=np.where(inst > 0, chosen, 0).ravel(),
                           minlength=len(types) + 1)[1:] / np.maximum(areas, 1)


def model_id(checkpoint: Path) -> str:
    """``<folder>:<first 12 hex of the checkpoint's sha256>``: names exactly one set of weights."""
    return f"{checkpoint.parent.name}:{sha256_file(checkpoint)[:12]}"


def load_model(path: str | Path, device: str = "cpu", postprocess: PostprocessConfig | None = None) -> LoadedModel:
    """Rebuild the model a checkpoint was trained as and load its weights (``weights_only=True``).

    Reads this platform's checkpoints and the official CellViT ones (``CellViT-256-x40.pth``, ...).
    """
    ckpt = load_checkpoint(path)
    if is_official(ckpt):
        model = load_official(ckpt, path)
        meta = official_meta(ckpt, path, model.cfg)
    else:
        cfg = ckpt.get("config")
        if not isinstance(cfg, dict):
            raise InputError(path, "checkpoint has no model config (not written by this platform's training)",
                             "use a best.pt / last.pt from a cellvit_* asset, an official CellViT checkpoint, or train a model first")
        try:
            model = CellViT(CellViTConfig.from_dict(cfg))
        except TypeError as exc:
            raise InputError(path, f"checkpoint was written for an older model layout ({exc})",
                             "train the model again with this version") from exc
        apply_weights(model, ckpt, path)
        meta = dict(ckpt.get("meta") or {})
    model.to(device).eval()
    return LoadedModel(model, meta, device, postprocess.model_dump() if postprocess is not None else {}, path)


@dataclass
class CellViTSegmenter:
    """A trained model behind the ``NucleusSegmenter`` interface of the reference segmentation.

    Patches at another pixel size than the model was trained at are resized to it and the
    instances resized back (nearest neighbour), so a 40x model also segments 20x patches.
    """

    checkpoint: str
    device: str = "cpu"
    name: str = "cellvit"

    magnification: str | None = None  # overrides what the checkpoint says (an official file without -x40 / -x20)

    def __post_init__(self) -> None:
        self._model = load_model(self.checkpoint, self.device)
        if self.magnification:
            self._model.meta["um_per_px"] = NOMINAL_UM_PER_PX.get(self.magnification)
        if not self._model.meta.get("um_per_px"):
            raise InputError(self.checkpoint, "the checkpoint does not say which magnification it was trained at",
                             "set reference_segmentation.cellvit.magnification to 40x or 20x in sthelar_platform/config/tiling.yaml")

    def segment(self, rgb: np.ndarray, um_per_px: float) -> np.ndarray:
        h, w = rgb.shape[:2]
        trained_um = float(self._model.meta["um_per_px"])
        f = um_per_px / trained_um
        size = (max(16, int(round(w * f / 16)) * 16), max(16, int(round(h * f / 16)) * 16))
        img = rgb[..., :3] if size == (w, h) else cv2.resize(rgb[..., :3], size, interpolation=cv2.INTER_LINEAR)
        inst = self._model.predict(np.ascontiguousarray(img)[None])[0].inst
        if inst.shape != (h, w):
            inst = cv2.resize(inst, (w, h), interpolation=cv2.INTER_NEAREST)
        return inst.astype(np.int32)


def cellvit_segmenter(cfg: CellViTSegmenterConfig, root: Path | None, device: str = "cpu") -> CellViTSegmenter:
    """A trained or official CellViT as the reference segmenter (``reference_segmentation.cellvit`` in tiling.yaml);
    its checkpoint is relative to the storage root ``root`` unless absolute.
    """
    if not cfg.checkpoint:
        raise ConfigError("tiling.yaml", "reference_segmentation.cellvit.checkpoint",
                          "reference_segmentation.method is cellvit but no checkpoint is set",
                          "set it (e.g. models/cellvit_detailed/best.pt)")
    ckpt = Path(cfg.checkpoint)
    if not ckpt.is_absolute() and root is not None:
        ckpt = Path(root) / ckpt
    return CellViTSegmenter(str(ckpt), device, magnification=cfg.magnification)
