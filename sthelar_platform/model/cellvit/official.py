"""Checkpoints of the official CellViT models (``CellViT-256-x40.pth``, ``CellViT-SAM-H-x40.pth``, ...).

Such a file is a dict with ``arch`` (``CellViT256`` / ``CellViTSAM``), ``model_state_dict`` and
``config`` (a flat dict with dotted keys such as ``data.num_nuclei_classes`` and, for SAM,
``model.backbone`` = ``SAM-B`` / ``SAM-L`` / ``SAM-H``). Our model carries the official parameter
names, so the state dict loads with ``strict=True``; it is read with ``weights_only=True``.
"""

from __future__ import annotations

import re
from pathlib import Path

from sthelar_platform.core.errors import InputError
from sthelar_platform.model.cellvit.data import NOMINAL_UM_PER_PX
from sthelar_platform.model.cellvit.model import CONFIGS, CellViT, CellViTConfig

SAM_SIZES = {"SAM-B": "sam_b", "SAM-L": "sam_l", "SAM-H": "sam_h"}
# The released checkpoints were trained on PanNuke: background + these five nucleus classes
PANNUKE_CLASSES = ("Neoplastic", "Inflammatory", "Connective", "Dead", "Epithelial")
FIX = "use an official CellViT-256 or CellViT-SAM-B/L/H checkpoint (CellViT-256-x40.pth, CellViT-SAM-H-x40.pth, ...)"
# The tensors whose size depends on the task: re-initialised when fine-tuning to another class count
TASK_HEADS = ("nuclei_type_maps_decoder.decoder0_header.2.", "encoder.head.", "classifier_head.")


def is_official(ckpt: dict) -> bool:
    """An official checkpoint (``arch`` + ``model_state_dict``), as opposed to one this platform wrote."""
    return isinstance(ckpt, dict) and "arch" in ckpt and "model_state_dict" in ckpt


def _setting(config: dict, dotted: str):
    """``data.num_nuclei_classes`` from a flat dotted config or a nested one."""
    if dotted in config:
        return config[dotted]
    node = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def official_size(ckpt: dict, path: str | Path) -> str:
    """Our model size for an official checkpoint's architecture; anything else is a one-line InputError."""
    arch, config = ckpt.get("arch"), ckpt.get("config") or {}
    if _setting(config, "model.regression_loss"):
        raise InputError(path, "checkpoint was trained with regression_loss (4-channel NP head), which is not supported", FIX)
    if arch == "CellViT256":
        return "cellvit_256"
    if arch == "CellViTSAM":
        backbone = str(_setting(config, "model.backbone") or "").upper()
        if backbone not in SAM_SIZES:
            raise InputError(path, f"CellViTSAM checkpoint with unknown backbone {backbone or 'none'!r}", FIX)
        return SAM_SIZES[backbone]
    raise InputError(path, f"checkpoint architecture {arch!r} is not supported", FIX)


def official_config(ckpt: dict, path: str | Path) -> CellViTConfig:
    """The configuration that rebuilds an official checkpoint's model with its own class counts."""
    size = official_size(ckpt, path)
    config = ckpt.get("config") or {}
    n_nuclei, n_tissues = _setting(config, "data.num_nuclei_classes"), _setting(config, "data.num_tissue_classes")
    if n_nuclei is None:  # older files: the class count is the type head's output width
        n_nuclei = ckpt["model_state_dict"]["nuclei_type_maps_decoder.decoder0_header.2.weight"].shape[0]
    if n_tissues is None:
        head = "classifier_head.weight" if size.startswith("sam") else "encoder.head.weight"
        n_tissues = ckpt["model_state_dict"][head].shape[0]
    return CellViTConfig(**{**CONFIGS[size], "n_types": int(n_nuclei), "n_tissues": int(n_tissues)})


def official_magnification(ckpt: dict, path: str | Path) -> str | None:
    """``40x`` / ``20x`` from the checkpoint's config, else from its file name (``-x40`` / ``-x20``)."""
    value = _setting(ckpt.get("config") or {}, "data.magnification")
    if value is not None:
        return f"{int(float(value))}x"
    found = re.search(r"x(20|40)(?![0-9])", Path(path).name)
    return f"{found.group(1)}x" if found else None


def official_meta(ckpt: dict, path: str | Path, cfg: CellViTConfig) -> dict:
    """What inference needs beside the weights: classes, magnification, input normalisation, HV activation."""
    mag = official_magnification(ckpt, path)
    norm = _setting(ckpt.get("config") or {}, "transformations.normalize") or {}
    classes = PANNUKE_CLASSES if cfg.n_types == len(PANNUKE_CLASSES) + 1 else tuple(f"class_{k}" for k in range(1, cfg.n_types))
    return {"classes": list(classes), "magnification": mag, "um_per_px": NOMINAL_UM_PER_PX.get(mag or ""),
            "official_arch": ckpt.get("arch"), "normalize": {"mean": list(norm.get("mean", (0.5, 0.5, 0.5))),
                                                             "std": list(norm.get("std", (0.5, 0.5, 0.5)))},
            "hv_activation": "identity"}  # the official HV head is trained on raw outputs


def load_official(ckpt: dict, path: str | Path) -> CellViT:
    """The official model with its weights, loaded strictly; a mismatch is a one-line InputError."""
    model = CellViT(official_config(ckpt, path))
    try:
        model.load_state_dict(ckpt["model_state_dict"], strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if "\n" in str(exc) else str(exc)
        raise InputError(path, f"the {ckpt.get('arch')} weights do not fit its architecture ({first[:160]})", FIX) from exc
    return model


def initialise_from_official(model: CellViT, ckpt: dict, path: str | Path) -> list[str]:
    """Copy an official checkpoint's weights into ``model`` for fine-tuning; returns the re-initialised tensors.

    The encoder and decoders must match (same architecture); the nucleus-type and tissue heads are
    kept as initialised when their class count differs from the checkpoint's, and so is a cell head
    (``cells.py``), which the official models do not have.
    """
    size = official_size(ckpt, path)
    state, own = ckpt["model_state_dict"], model.state_dict()
    ours_only = {k: v for k, v in own.items() if k.startswith("cell_classifier.")}
    same = CONFIGS[size]["embed_dim"] == model.cfg.embed_dim and CONFIGS[size].get("backbone", "vit") == model.cfg.backbone
    if not same or set(state) != set(own) - set(ours_only):
        raise InputError(path, f"checkpoint is {ckpt['arch']} ({size}) but the model being trained is another architecture",
                         f"set the training schedule's size to {size} to fine-tune it")
    fresh = [k for k, v in state.items() if tuple(v.shape) != tuple(own[k].shape)]
    outside = [k for k in fresh if not k.startswith(TASK_HEADS)]
    if outside:
        raise InputError(path, f"checkpoint weights do not fit outside the class heads ({outside[0]})", FIX)
    model.load_state_dict({k: (own[k] if k in fresh else v) for k, v in state.items()} | ours_only, strict=True)
    return fresh + sorted(ours_only)

