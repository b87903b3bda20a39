"""Architecture parity with the official CellViT models (the ``cellvit`` package, TIO-IKIM/CellViT).

The fixture in tests/fixtures/cellvit_official was made by running the official model code once
(see its make_fixture.py); the weights are regenerated here from names and shapes.
"""

import json

import numpy as np
import pytest
import torch
from official_cellvit import FIXTURES, deterministic_input, deterministic_state_dict, sample_positions

from sthelar_platform.model.cellvit.model import CellViT, CellViTConfig, build_model

FULL = json.loads((FIXTURES / "full_size_shapes.json").read_text())
REDUCED = json.loads((FIXTURES / "reduced.json").read_text())
OUTPUTS = np.load(FIXTURES / "reduced_outputs.npz")
N_NUCLEI, N_TISSUES = 6, 19


@pytest.mark.parametrize(("official", "size"), [("CellViT256", "cellvit_256"), ("CellViTSAM/SAM-B", "sam_b"),
                                                ("CellViTSAM/SAM-L", "sam_l"), ("CellViTSAM/SAM-H", "sam_h")])
def test_full_size_models_have_the_official_parameter_names_and_shapes(official, size):
    with torch.device("meta"):  # no memory for SAM-H's 630 M parameters
        ours = {k: list(v.shape) for k, v in build_model(size, N_NUCLEI, N_TISSUES).state_dict().items()}
    theirs = FULL[official]
    assert sorted(set(theirs) - set(ours)) == [] and sorted(set(ours) - set(theirs)) == []
    assert {k: v for k, v in ours.items() if theirs[k] != v} == {}


@pytest.fixture(scope="module")
def batch():
    return deterministic_input(REDUCED["input"]["seed"], REDUCED["input"]["shape"])


def _reduced(name: str) -> CellViT:
    model = CellViT(CellViTConfig.from_dict(REDUCED[name]["config"]))
    model.load_state_dict(deterministic_state_dict(REDUCED[name]["state_dict_shapes"]), strict=True)
    return model.eval()


@pytest.mark.parametrize("name", ["vit", "sam"])
def test_reduced_model_loads_the_official_state_dict_strictly_and_reproduces_its_outputs(name, batch):
    model = _reduced(name)
    with torch.no_grad():
        out = model(batch)
    ys, xs = sample_positions(REDUCED["samples"]["seed"], batch.shape[2], batch.shape[3], REDUCED["samples"]["n"])
    for head in ("np", "hv", "nt"):
        expected = OUTPUTS[f"{name}_{head}"]
        got = out[head][:, :, ys, xs].numpy()
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() < 1e-4, (head, float(np.abs(got - expected).max()))
    assert np.abs(out["tissue"].numpy() - OUTPUTS[f"{name}_tissue"]).max() < 1e-4


@pytest.mark.parametrize("name", ["vit", "sam"])
def test_the_comparison_sees_the_encoder(name, batch):
    """Dropping one attention output inside the encoder moves every head at least 10x the tolerance."""
    model = _reduced(name)
    with torch.no_grad():
        model.encoder.blocks[1].attn.proj.weight.zero_()
        out = model(batch)
    ys, xs = sample_positions(REDUCED["samples"]["seed"], batch.shape[2], batch.shape[3], REDUCED["samples"]["n"])
    for head in ("np", "hv", "nt"):
        assert np.abs(out[head][:, :, ys, xs].numpy() - OUTPUTS[f"{name}_{head}"]).max() > 1e-3, head
    assert np.abs(out["tissue"].numpy() - OUTPUTS[f"{name}_tissue"]).max() > 1e-2
