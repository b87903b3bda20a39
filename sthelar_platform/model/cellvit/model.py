"""CellViT (Hörst et al. 2024) written in plain torch (no timm / torchvision, which pull another torch).

A ViT with 16 px patches; the token maps of four depths feed a UNETR-style decoder whose skip
projections are shared and whose upsampling branches are one per head: nucleus probability
(NP, 2 channels), horizontal/vertical distance maps (HV, 2) and nucleus type (NT, classes + 1).
A linear head on the class token predicts the tissue type.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class CellViTConfig:
    embed_dim: int = 96
    depth: int = 4
    num_heads: int = 3
    mlp_ratio: float = 4.0
    patch_size: int = 16
    img_size: int = 256
    n_types: int = 10          # nucleus classes + background
    n_tissues: int = 1
    decoder_channels: tuple[int, int, int, int] = (16, 32, 64, 128)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def skip_depths(self) -> tuple[int, int, int, int]:
        """Blocks whose outputs feed the decoder: evenly spaced, the last block included."""
        q = self.depth / 4
        return tuple(max(1, round(q * i)) for i in range(1, 5))  # type: ignore[return-value]


CONFIGS: dict[str, dict] = {
    # tiny: for CPU tests and the demo; the narrow decoder keeps it near 5 training patches/s on 2 cores
    "tiny": {"embed_dim": 96, "depth": 4, "num_heads": 3, "decoder_channels": (8, 16, 32, 64)},
    "vit_s": {"embed_dim": 384, "depth": 12, "num_heads": 6, "decoder_channels": (32, 64, 128, 256)},
    "vit_b": {"embed_dim": 768, "depth": 12, "num_heads": 12, "decoder_channels": (32, 64, 128, 256)},
}


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, int(dim * mlp_ratio)), nn.GELU(), nn.Linear(int(dim * mlp_ratio), dim))
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        x = x + self.proj(att.transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.norm2(x))


class ViTEncoder(nn.Module):
    def __init__(self, cfg: CellViTConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = nn.Conv2d(3, cfg.embed_dim, cfg.patch_size, cfg.patch_size)
        n = (cfg.img_size // cfg.patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.pos_embed = nn.Parameter(torch.randn(1, n + 1, cfg.embed_dim) * 0.02)
        self.blocks = nn.ModuleList(Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.embed_dim)

    def _pos(self, h: int, w: int) -> torch.Tensor:
        g = self.cfg.img_size // self.cfg.patch_size
        if (h, w) == (g, g):
            return self.pos_embed
        grid = self.pos_embed[:, 1:].reshape(1, g, g, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).flatten(1, 2)
        return torch.cat([self.pos_embed[:, :1], grid], 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        tokens = self.patch_embed(x)
        b, d, h, w = tokens.shape
        z = torch.cat([self.cls_token.expand(b, -1, -1), tokens.flatten(2).transpose(1, 2)], 1) + self._pos(h, w)
        skips = []
        for i, blk in enumerate(self.blocks, 1):
            z = blk(z)
            if i in self.cfg.skip_depths:
                out = self.norm(z) if i == self.cfg.depth else z
                skips.append(out[:, 1:].transpose(1, 2).reshape(b, d, h, w))
        return self.norm(z)[:, 0], skips


def _conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _deconv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 2, 2), _conv(cout, cout))


class UpsamplingBranch(nn.Module):
    """One head's path from the deepest tokens back to full resolution, merging the shared skips."""

    def __init__(self, dim: int, ch: tuple[int, int, int, int], out_channels: int):
        super().__init__()
        c0, c1, c2, c3 = ch
        self.bottleneck = nn.ConvTranspose2d(dim, c3, 2, 2)
        self.up3 = nn.Sequential(_conv(2 * c3, c3), _conv(c3, c3), nn.ConvTranspose2d(c3, c2, 2, 2))
        self.up2 = nn.Sequential(_conv(2 * c2, c2), _conv(c2, c2), nn.ConvTranspose2d(c2, c1, 2, 2))
        self.up1 = nn.Sequential(_conv(2 * c1, c1), _conv(c1, c1), nn.ConvTranspose2d(c1, c0, 2, 2))
        self.head = nn.Sequential(_conv(2 * c0, c0), _conv(c0, c0), nn.Conv2d(c0, out_channels, 1))

    def forward(self, z4: torch.Tensor, s3: torch.Tensor, s2: torch.Tensor, s1: torch.Tensor, s0: torch.Tensor) -> torch.Tensor:
        x = self.up3(torch.cat([s3, self.bottleneck(z4)], 1))
        x = self.up2(torch.cat([s2, x], 1))
        x = self.up1(torch.cat([s1, x], 1))
        return self.head(torch.cat([s0, x], 1))


class CellViT(nn.Module):
    def __init__(self, cfg: CellViTConfig):
        super().__init__()
        self.cfg = cfg
        d, (c0, c1, c2, c3) = cfg.embed_dim, cfg.decoder_channels
        self.encoder = ViTEncoder(cfg)
        self.skip0 = nn.Sequential(_conv(3, c0), _conv(c0, c0))                    # full resolution
        self.skip1 = nn.Sequential(_deconv(d, c1), _deconv(c1, c1), _deconv(c1, c1))  # 1/2
        self.skip2 = nn.Sequential(_deconv(d, c2), _deconv(c2, c2))                # 1/4
        self.skip3 = _deconv(d, c3)                                                 # 1/8
        self.np_branch = UpsamplingBranch(d, cfg.decoder_channels, 2)
        self.hv_branch = UpsamplingBranch(d, cfg.decoder_channels, 2)
        self.nt_branch = UpsamplingBranch(d, cfg.decoder_channels, cfg.n_types)
        self.tissue_head = nn.Linear(d, cfg.n_tissues)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``x``: (B, 3, H, W) normalized RGB, H and W multiples of 16."""
        cls, (z1, z2, z3, z4) = self.encoder(x)
        s0, s1, s2, s3 = self.skip0(x), self.skip1(z1), self.skip2(z2), self.skip3(z3)
        return {"np": self.np_branch(z4, s3, s2, s1, s0), "hv": self.hv_branch(z4, s3, s2, s1, s0),
                "nt": self.nt_branch(z4, s3, s2, s1, s0), "tissue": self.tissue_head(cls)}


def build_model(size: str, n_types: int, n_tissues: int, **overrides) -> CellViT:
    """A CellViT of a named size with ``n_types`` nucleus and ``n_tissues`` tissue classes."""
    if size not in CONFIGS:
        raise ValueError(f"unknown CellViT size {size!r}; known: {sorted(CONFIGS)}")
    return CellViT(CellViTConfig(**{**CONFIGS[size], **overrides, "n_types": n_types, "n_tissues": n_tissues}))
