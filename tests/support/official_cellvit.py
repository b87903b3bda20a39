"""Deterministic weights and inputs for the CellViT parity fixture (tests/fixtures/cellvit_official).

The fixture does not store weights: both the script that ran the official model and the tests fill
every tensor of a state dict from its name and shape with this recipe, so only the name -> shape
table, the input seed and sampled outputs are committed.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

FIXTURES = __import__("pathlib").Path(__file__).resolve().parents[1] / "fixtures" / "cellvit_official"


def deterministic_tensor(name: str, shape: list[int] | tuple[int, ...]) -> torch.Tensor:
    """A tensor for ``name`` that keeps activations of order one through the network."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    shape = tuple(int(s) for s in shape)
    if name.endswith("num_batches_tracked"):
        return torch.tensor(0, dtype=torch.long)
    if name.endswith("running_var"):
        values = rng.uniform(0.75, 1.25, shape)
    elif name.endswith("running_mean"):
        values = rng.normal(0, 0.1, shape)
    elif len(shape) == 1 and name.endswith(".weight"):  # LayerNorm / BatchNorm scales
        values = 1 + rng.normal(0, 0.1, shape)
    elif name.endswith(".bias"):
        values = rng.normal(0, 0.02, shape)
    elif any(key in name for key in ("pos_embed", "cls_token", "rel_pos")):
        values = rng.normal(0, 0.1, shape)
    else:  # weights: fan-in scaled
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
        values = rng.normal(0, 1 / np.sqrt(max(fan_in, 1)), shape)
    return torch.from_numpy(np.asarray(values, np.float32))


def deterministic_state_dict(shapes: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    return {name: deterministic_tensor(name, shape) for name, shape in shapes.items()}


def deterministic_input(seed: int, shape: list[int] | tuple[int, ...]) -> torch.Tensor:
    """A normalised-image-like batch."""
    return torch.from_numpy(np.random.default_rng(seed).normal(0, 1, tuple(shape)).astype(np.float32))


def sample_positions(seed: int, height: int, width: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, height, n), rng.integers(0, width, n)
