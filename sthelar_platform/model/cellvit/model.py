"""CellViT (Hörst et al. 2024) written in plain torch (no timm / torchvision, which pull another torch).

The module tree carries the parameter names of the official CellViT models (TIO-IKIM/CellViT and
the ``cellvit`` package), so their checkpoints load with ``strict=True``:

- ``encoder``: a ViT (CellViT-256: ViT-S/16 with a class token; ``encoder.head`` predicts the tissue)
  or the SAM image encoder (windowed attention with decomposed relative positions, a few
  global-attention blocks and a neck; ``classifier_head`` predicts the tissue);
- ``decoder0``-``decoder3``: the shared skip projections of four encoder depths (and the image);
- ``nuclei_binary_map_decoder``, ``hv_map_decoder``, ``nuclei_type_maps_decoder``: one UNETR-style
  upsampling branch per head: nucleus probability (NP, 2 channels), horizontal/vertical distance
  maps (HV, 2) and nucleus type (NT, classes + 1).

The official decoder widths follow the embedding size; a CPU-sized model narrows them
(``decoder_widths``) without changing the names. With ``cell_head`` the model adds a
``cell_classifier`` (not in the official models): one type per nucleus from the encoder's features
pooled over it (``cells.py``), which then replaces the NT branch's pixel vote; such a model may
drop the NT branch (``type_maps: false``).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from sthelar_platform.model.cellvit.cells import Instances, instances, pool_features

# (decoder0 inner, decoder0 / header, level 1/2, level 1/4, bottleneck, skip 1 first, skip 1 second)
Widths = tuple[int, int, int, int, int, int, int]


def official_widths(embed_dim: int) -> Widths:
    """The official decoder widths: wider skips and bottleneck from a 512-wide encoder up."""
    return (32, 64, 128, 256, 312, 256, 128) if embed_dim < 512 else (32, 64, 128, 256, 512, 512, 256)


@dataclass(frozen=True)
class CellViTConfig:
    embed_dim: int = 96
    depth: int = 4
    num_heads: int = 3
    mlp_ratio: float = 4.0
    patch_size: int = 16
    img_size: int = 256            # the positional grid's image size (official ViT: 224, SAM: 1024)
    n_types: int = 10              # nucleus classes + background
    n_tissues: int = 1
    backbone: Literal["vit", "sam", "conv"] = "vit"
    extract_layers: tuple[int, ...] | None = None   # blocks (1-based) feeding the decoder; None: evenly spaced
    decoder_widths: tuple[int, ...] | None = None   # None: the official widths for embed_dim
    window_size: int = 14          # SAM: attention window of the non-global blocks
    global_attn_indexes: tuple[int, ...] = ()      # SAM: 0-based blocks with global attention
    neck_channels: int = 256       # SAM: the neck's output channels (the tissue head reads their mean)
    conv_widths: tuple[int, ...] = (16, 32, 64, 128)  # conv: channels at 1/2, 1/4, 1/8, 1/16 (embed_dim = the last)
    cell_head: bool = False        # a per-nucleus type classifier on pooled encoder features (cells.py)
    cell_head_hidden: int = 128
    type_maps: bool = True         # the NT branch; a model with a cell head may do without it (a third less decoding)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CellViTConfig:
        tuples = ("extract_layers", "decoder_widths", "global_attn_indexes", "conv_widths")
        fields: dict[str, Any] = {k: (tuple(v) if k in tuples and v is not None else v) for k, v in d.items()}
        return cls(**fields)

    @property
    def skip_depths(self) -> tuple[int, int, int, int]:
        """Blocks whose outputs feed the decoder: the configured ones, else evenly spaced ending with the last."""
        if self.extract_layers is not None:
            return tuple(self.extract_layers)  # type: ignore[return-value]
        q = self.depth / 4
        return tuple(max(1, round(q * i)) for i in range(1, 5))  # type: ignore[return-value]

    @property
    def skip_channels(self) -> int:
        """Channels of the four encoder skips together (the cell classifier's input)."""
        return sum(self.conv_widths) if self.backbone == "conv" else 4 * self.embed_dim

    @property
    def widths(self) -> Widths:
        return tuple(self.decoder_widths) if self.decoder_widths else official_widths(self.embed_dim)  # type: ignore[return-value]


_SAM = {"backbone": "sam", "img_size": 1024, "window_size": 14, "neck_channels": 256}
CONFIGS: dict[str, dict] = {
    # tiny: a ViT for CPU tests; narrow decoder, same module names as the official models
    "tiny": {"embed_dim": 96, "depth": 4, "num_heads": 3, "decoder_widths": (8, 8, 16, 32, 64, 32, 16)},
    # conv_small: a CNN encoder for CPU training (the demo's schedule); same decoder and heads
    "conv_small": {"backbone": "conv", "conv_widths": (16, 32, 64, 128), "embed_dim": 128,
                   "decoder_widths": (8, 8, 16, 32, 64, 0, 0)},
    # the official architectures (CellViT-256 = ViT-S/16 from HIPT, CellViT-SAM-B/L/H)
    "cellvit_256": {"embed_dim": 384, "depth": 12, "num_heads": 6, "img_size": 224, "extract_layers": (3, 6, 9, 12)},
    "vit_b": {"embed_dim": 768, "depth": 12, "num_heads": 12, "img_size": 224, "extract_layers": (3, 6, 9, 12)},
    "sam_b": {**_SAM, "embed_dim": 768, "depth": 12, "num_heads": 12, "global_attn_indexes": (2, 5, 8, 11),
              "extract_layers": (3, 6, 9, 12)},
    "sam_l": {**_SAM, "embed_dim": 1024, "depth": 24, "num_heads": 16, "global_attn_indexes": (5, 11, 17, 23),
              "extract_layers": (6, 12, 18, 24)},
    "sam_h": {**_SAM, "embed_dim": 1280, "depth": 32, "num_heads": 16, "global_attn_indexes": (7, 15, 23, 31),
              "extract_layers": (8, 16, 24, 32)},
}
CONFIGS["vit_s"] = CONFIGS["cellvit_256"]  # the earlier name of the CUDA schedule's size


# -- ViT encoder (CellViT / CellViT-256) ----------------------------------------------------------------
class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, patch_size, patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViTEncoder(nn.Module):
    """ViT with a class token; positions learnt on an ``img_size`` grid, resampled bicubically for others."""

    def __init__(self, cfg: CellViTConfig):
        super().__init__()
        self.cfg = cfg
        grid = cfg.img_size // cfg.patch_size
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.pos_embed = nn.Parameter(torch.randn(1, grid * grid + 1, cfg.embed_dim) * 0.02)
        self.blocks = nn.ModuleList(Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        self.head = nn.Linear(cfg.embed_dim, cfg.n_tissues)

    def _positions(self, rows: int, cols: int) -> torch.Tensor:
        n = self.pos_embed.shape[1] - 1
        side = int(round(n**0.5))
        if rows * cols == n and rows == cols:
            return self.pos_embed
        grid = self.pos_embed[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        # a scale factor a little above the exact ratio, as DINO / CellViT resample (dino issue #8)
        grid = F.interpolate(grid, scale_factor=((rows + 0.1) / side, (cols + 0.1) / side), mode="bicubic")
        return torch.cat([self.pos_embed[:, :1], grid.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)], 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        tokens = self.patch_embed(x)
        b, d, rows, cols = tokens.shape
        z = torch.cat([self.cls_token.expand(b, -1, -1), tokens.flatten(2).transpose(1, 2)], 1)
        z = z + self._positions(rows, cols)
        skips = []
        for i, blk in enumerate(self.blocks, 1):
            z = blk(z)
            if i in self.cfg.skip_depths:
                skips.append(z[:, 1:].transpose(1, 2).reshape(b, d, rows, cols))
        return self.head(self.norm(z)[:, 0]), skips


# -- SAM image encoder (CellViT-SAM-B/L/H) -------------------------------------------------------------
def _relative_table(size: int, table: torch.Tensor) -> torch.Tensor:
    """(size, size, C) embeddings of the offsets q - k along one axis, the table resized linearly if needed."""
    length = 2 * size - 1
    if table.shape[0] != length:
        table = F.interpolate(table.T[None], size=length, mode="linear")[0].T
    offsets = torch.arange(size)[:, None] - torch.arange(size)[None, :] + size - 1
    return table[offsets]


class SamAttention(nn.Module):
    def __init__(self, dim: int, heads: int, rel_size: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * rel_size - 1, dim // heads))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * rel_size - 1, dim // heads))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, d = x.shape
        hd = d // self.heads
        q, k, v = self.qkv(x).reshape(b, h * w, 3, self.heads, hd).permute(2, 0, 3, 1, 4)
        # decomposed relative positions (MViTv2): a bias per (query row, key row) and (query col, key col)
        rq = q.reshape(b, self.heads, h, w, hd)
        bias_h = torch.einsum("bnhwc,hkc->bnhwk", rq, _relative_table(h, self.rel_pos_h))
        bias_w = torch.einsum("bnhwc,wkc->bnhwk", rq, _relative_table(w, self.rel_pos_w))
        bias = (bias_h[..., :, None] + bias_w[..., None, :]).reshape(b, self.heads, h * w, h * w)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(out.transpose(1, 2).reshape(b, h, w, d))


class SamMlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.lin1, self.lin2, self.act = nn.Linear(dim, hidden), nn.Linear(hidden, dim), nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))


class SamBlock(nn.Module):
    """Pre-norm transformer block on a (B, H, W, C) token grid; windowed unless ``window`` is 0."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, window: int, grid: int):
        super().__init__()
        self.window = window
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn = SamAttention(dim, heads, window or grid)
        self.mlp = SamMlp(dim, int(dim * mlp_ratio))

    def _windowed(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        s = self.window
        ph, pw = -h % s, -w % s
        x = F.pad(x, (0, 0, 0, pw, 0, ph))
        hp, wp = h + ph, w + pw
        windows = x.reshape(b, hp // s, s, wp // s, s, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, s, s, c)
        out = self.attn(windows).reshape(b, hp // s, wp // s, s, s, c).permute(0, 1, 3, 2, 4, 5)
        return out.reshape(b, hp, wp, c)[:, :h, :w]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        x = x + (self._windowed(y) if self.window else self.attn(y))
        return x + self.mlp(self.norm2(x))


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of a (B, C, H, W) map."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight, self.bias, self.eps = nn.Parameter(torch.ones(channels)), nn.Parameter(torch.zeros(channels)), eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        return self.weight[:, None, None] * (x - mean) / torch.sqrt(var + self.eps) + self.bias[:, None, None]


class SamEncoder(nn.Module):
    """SAM's image encoder: absolute positions on an ``img_size`` grid (cropped), windowed blocks, a neck."""

    def __init__(self, cfg: CellViTConfig):
        super().__init__()
        self.cfg = cfg
        grid = cfg.img_size // cfg.patch_size
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, cfg.embed_dim))
        self.blocks = nn.ModuleList(
            SamBlock(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, 0 if i in cfg.global_attn_indexes else cfg.window_size, grid)
            for i in range(cfg.depth))
        c = cfg.neck_channels
        self.neck = nn.Sequential(nn.Conv2d(cfg.embed_dim, c, 1, bias=False), LayerNorm2d(c),
                                  nn.Conv2d(c, c, 3, padding=1, bias=False), LayerNorm2d(c))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        z = self.patch_embed(x).permute(0, 2, 3, 1)
        z = z + self.pos_embed[:, : z.shape[1], : z.shape[2]]
        skips = []
        for i, blk in enumerate(self.blocks, 1):
            z = blk(z)
            if i in self.cfg.skip_depths:
                skips.append(z.permute(0, 3, 1, 2))
        return self.neck(z.permute(0, 3, 1, 2)).mean((2, 3)), skips


# -- CPU-sized convolutional encoder ----------------------------------------------------------------------
class ConvEncoder(nn.Module):
    """Four stride-2 stages (1/2 ... 1/16 of the image), a CPU-sized alternative to the ViT.

    Its skips come at their own scale, so the decoder only projects them. On the demo dataset it
    trained at the tiny ViT's speed to detection F1 0.915 / bPQ 0.857 in 189 s (tiny: 0.905 / 0.760).
    """

    def __init__(self, cfg: CellViTConfig):
        super().__init__()
        widths, cin, stages = cfg.conv_widths, 3, []
        for c in widths:
            stages.append(nn.Sequential(nn.Conv2d(cin, c, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c),
                                        nn.ReLU(True), Conv2DBlock(c, c)))
            cin = c
        self.stages = nn.ModuleList(stages)
        self.head = nn.Linear(widths[-1], cfg.n_tissues)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return self.head(x.mean((2, 3))), skips


# -- decoder -------------------------------------------------------------------------------------------
class Conv2DBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(True), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class Deconv2DBlock(nn.Module):
    """2x transposed convolution, then a 3x3 convolution block."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.block = nn.Sequential(nn.ConvTranspose2d(cin, cout, 2, 2), nn.Conv2d(cout, cout, 3, padding=1),
                                   nn.BatchNorm2d(cout), nn.ReLU(True), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


def _upsampling_branch(embed: int, widths: Widths, out_channels: int) -> nn.Sequential:
    """One head's path from the deepest tokens back to full resolution, merging the shared skips."""
    _, d0, d1, d2, bottleneck, _, _ = widths
    return nn.Sequential(OrderedDict([
        ("bottleneck_upsampler", nn.ConvTranspose2d(embed, bottleneck, 2, 2)),
        ("decoder3_upsampler", nn.Sequential(Conv2DBlock(2 * bottleneck, bottleneck), Conv2DBlock(bottleneck, bottleneck),
                                             Conv2DBlock(bottleneck, bottleneck), nn.ConvTranspose2d(bottleneck, d2, 2, 2))),
        ("decoder2_upsampler", nn.Sequential(Conv2DBlock(2 * d2, d2), Conv2DBlock(d2, d2), nn.ConvTranspose2d(d2, d1, 2, 2))),
        ("decoder1_upsampler", nn.Sequential(Conv2DBlock(2 * d1, d1), Conv2DBlock(d1, d1), nn.ConvTranspose2d(d1, d0, 2, 2))),
        ("decoder0_header", nn.Sequential(Conv2DBlock(2 * d0, d0), Conv2DBlock(d0, d0), nn.Conv2d(d0, out_channels, 1))),
    ]))


class CellViT(nn.Module):
    def __init__(self, cfg: CellViTConfig):
        super().__init__()
        self.cfg = cfg
        e = cfg.embed_dim
        d0_inner, d0, d1, d2, bottleneck, skip_a, skip_b = cfg.widths
        self.decoder0 = nn.Sequential(Conv2DBlock(3, d0_inner), Conv2DBlock(d0_inner, d0))            # full resolution
        if cfg.backbone == "conv":  # skips already at 1/2, 1/4, 1/8: project them
            self.encoder: nn.Module = ConvEncoder(cfg)
            c1, c2, c3, _ = cfg.conv_widths
            self.decoder1 = nn.Sequential(Conv2DBlock(c1, d1))
            self.decoder2 = nn.Sequential(Conv2DBlock(c2, d2))
            self.decoder3 = nn.Sequential(Conv2DBlock(c3, bottleneck))
        else:  # token maps at 1/16: upsample them to 1/2, 1/4, 1/8
            self.encoder = SamEncoder(cfg) if cfg.backbone == "sam" else ViTEncoder(cfg)
            self.decoder1 = nn.Sequential(Deconv2DBlock(e, skip_a), Deconv2DBlock(skip_a, skip_b), Deconv2DBlock(skip_b, d1))
            self.decoder2 = nn.Sequential(Deconv2DBlock(e, skip_a), Deconv2DBlock(skip_a, d2))        # 1/4
            self.decoder3 = nn.Sequential(Deconv2DBlock(e, bottleneck))                               # 1/8
        self.nuclei_binary_map_decoder = _upsampling_branch(e, cfg.widths, 2)
        self.hv_map_decoder = _upsampling_branch(e, cfg.widths, 2)
        if cfg.type_maps:
            self.nuclei_type_maps_decoder = _upsampling_branch(e, cfg.widths, cfg.n_types)
        elif not cfg.cell_head:
            raise ValueError("a CellViT without type maps needs the cell head to type its nuclei")
        if cfg.backbone == "sam":
            self.classifier_head = nn.Linear(cfg.neck_channels, cfg.n_tissues)
        if cfg.cell_head:
            c = cfg.skip_channels
            self.cell_classifier = nn.Sequential(nn.LayerNorm(c), nn.Linear(c, cfg.cell_head_hidden), nn.ReLU(True),
                                                 nn.Linear(cfg.cell_head_hidden, cfg.n_types - 1))

    def _branch(self, branch: nn.Module, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        z1, z2, z3, z4 = skips
        part = branch.get_submodule  # the branch's named stages (the official checkpoints' keys)
        y = part("decoder3_upsampler")(torch.cat([self.decoder3(z3), part("bottleneck_upsampler")(z4)], 1))
        y = part("decoder2_upsampler")(torch.cat([self.decoder2(z2), y], 1))
        y = part("decoder1_upsampler")(torch.cat([self.decoder1(z1), y], 1))
        return part("decoder0_header")(torch.cat([self.decoder0(x), y], 1))

    def maps(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
        """The NP / HV / NT maps and tissue logits, and the encoder skips (for ``classify_cells``)."""
        tissue, skips = self.encoder(x)
        if self.cfg.backbone == "sam":
            tissue = self.classifier_head(tissue)
        out = {"np": self._branch(self.nuclei_binary_map_decoder, x, skips),
               "hv": self._branch(self.hv_map_decoder, x, skips), "tissue": tissue}
        if self.cfg.type_maps:
            out["nt"] = self._branch(self.nuclei_type_maps_decoder, x, skips)
        return out, skips

    def classify_cells(self, skips: list[torch.Tensor], cells: Instances) -> torch.Tensor:
        """(n, classes) type logits of each nucleus (class k + 1 in column k) from its pooled skips."""
        return self.cell_classifier(pool_features(skips, cells))

    def forward(self, x: torch.Tensor, inst: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``x``: (B, 3, H, W) normalized RGB, H and W multiples of 16.

        With a cell head and the (B, H, W) instance maps ``inst``, ``cell`` holds each nucleus's type
        logits, nuclei numbered as ``cells.instances(inst)`` numbers them.
        """
        out, skips = self.maps(x)
        if self.cfg.cell_head and inst is not None:
            out["cell"] = self.classify_cells(skips, instances(inst))
        return out

    def encoder_parameters(self) -> list[nn.Parameter]:
        """The encoder's parameters (frozen for the first epochs when fine-tuning pretrained weights)."""
        return list(self.encoder.parameters())


def build_model(size: str, n_types: int, n_tissues: int, **overrides) -> CellViT:
    """A CellViT of a named size with ``n_types`` nucleus and ``n_tissues`` tissue classes."""
    if size not in CONFIGS:
        raise ValueError(f"unknown CellViT size {size!r}; known: {sorted(CONFIGS)}")
    return CellViT(CellViTConfig(**{**CONFIGS[size], **overrides, "n_types": n_types, "n_tissues": n_tissues}))
