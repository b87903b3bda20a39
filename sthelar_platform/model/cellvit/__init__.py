"""CellViT in plain torch: ViT encoder, UNETR-style decoders, HoVer-Net post-processing."""

from sthelar_platform.model.cellvit.model import CONFIGS, CellViT, CellViTConfig

__all__ = ["CONFIGS", "CellViT", "CellViTConfig"]
