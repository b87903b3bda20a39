"""Official CellViT checkpoint files: read with weights_only, used for inference and as a fine-tuning start."""

import json

import numpy as np
import pytest
import torch
from drawn_patches import drawn_patches
from official_cellvit import FIXTURES, deterministic_state_dict

from sthelar_platform.core.errors import InputError
from sthelar_platform.model.cellvit.data import PatchDataset
from sthelar_platform.model.cellvit.inference import CellViTSegmenter, load_model
from sthelar_platform.model.cellvit.model import build_model
from sthelar_platform.model.cellvit.official import initialise_from_official
from sthelar_platform.model.cellvit.training import TrainSettings, load_checkpoint, train

FULL = json.loads((FIXTURES / "full_size_shapes.json").read_text())


def _official_file(path, arch="CellViT256", table="CellViT256", **config):
    """A file laid out like the released ones: arch, model_state_dict and a flat dotted config."""
    conf = {"data.num_nuclei_classes": 6, "data.num_tissue_classes": 19, "model.backbone": "default", **config}
    torch.save({"arch": arch, "model_state_dict": deterministic_state_dict(FULL[table]), "config": conf,
                "epoch": 129}, path)
    return path


@pytest.fixture(scope="module")
def cellvit_256(tmp_path_factory):
    return _official_file(tmp_path_factory.mktemp("official") / "CellViT-256-x40.pth")


def test_an_official_checkpoint_loads_for_inference_with_its_magnification(cellvit_256):
    loaded = load_model(cellvit_256)
    assert loaded.model.cfg.embed_dim == 384 and loaded.model.cfg.n_types == 6 and loaded.model.cfg.n_tissues == 19
    assert loaded.meta["magnification"] == "40x" and loaded.meta["um_per_px"] == 0.25
    assert loaded.classes == ("Neoplastic", "Inflammatory", "Connective", "Dead", "Epithelial")
    rgb = np.random.default_rng(0).integers(0, 255, (1, 256, 256, 3), dtype=np.uint8)
    pred = loaded.predict(rgb)[0]
    assert pred.inst.shape == (256, 256) and pred.tissue_probs.shape == (19,)


def test_an_official_checkpoint_segments_20x_patches_at_its_own_magnification(cellvit_256):
    segmenter = CellViTSegmenter(str(cellvit_256))
    rgb = np.random.default_rng(1).integers(0, 255, (128, 128, 3), dtype=np.uint8)
    assert segmenter.segment(rgb, um_per_px=0.5).shape == (128, 128)  # resized to 40x and back


def test_a_checkpoint_without_magnification_asks_for_it(tmp_path):
    path = _official_file(tmp_path / "my_cellvit.pth")
    with pytest.raises(InputError, match="does not say which magnification.*Fix: set reference_segmentation.cellvit.magnification"):
        CellViTSegmenter(str(path))
    assert CellViTSegmenter(str(path), magnification="20x")._model.meta["um_per_px"] == 0.5


@pytest.mark.parametrize(("change", "message"), [
    ({"arch": "CellViTShared"}, "architecture 'CellViTShared' is not supported"),
    ({"config": {"model.backbone": "SAM-X", "data.num_nuclei_classes": 6}}, "unknown backbone 'SAM-X'"),
    ({"drop": "encoder.norm.weight"}, "do not fit its architecture.*encoder.norm.weight"),
])
def test_a_checkpoint_that_does_not_fit_is_a_one_line_error(cellvit_256, tmp_path, change, message):
    ckpt = torch.load(cellvit_256, weights_only=True)
    if "drop" in change:
        ckpt["model_state_dict"].pop(change["drop"])
    else:
        ckpt = {**ckpt, **change, "arch": change.get("arch", "CellViTSAM" if "config" in change else ckpt["arch"])}
    path = tmp_path / "bad.pth"
    torch.save(ckpt, path)
    with pytest.raises(InputError, match=message) as err:
        load_model(path)
    assert "\n" not in str(err.value) and "Fix:" in str(err.value)


def test_fine_tuning_keeps_the_encoder_and_decoders_and_reinitialises_other_class_heads(cellvit_256):
    ckpt = load_checkpoint(cellvit_256)
    model = build_model("cellvit_256", n_types=4, n_tissues=1)
    fresh = initialise_from_official(model, ckpt, cellvit_256)
    assert sorted(fresh) == ["encoder.head.bias", "encoder.head.weight",
                             "nuclei_type_maps_decoder.decoder0_header.2.bias", "nuclei_type_maps_decoder.decoder0_header.2.weight"]
    own = model.state_dict()
    for name in ("encoder.blocks.11.attn.qkv.weight", "hv_map_decoder.decoder0_header.2.weight", "decoder1.0.block.1.weight"):
        assert torch.equal(own[name], ckpt["model_state_dict"][name])
    with pytest.raises(InputError, match="set the training schedule's size to cellvit_256"):
        initialise_from_official(build_model("tiny", n_types=4, n_tissues=1), ckpt, cellvit_256)
    with_head = build_model("cellvit_256", n_types=4, n_tissues=1, cell_head=True)  # ours only: starts fresh
    fresh = initialise_from_official(with_head, ckpt, cellvit_256)
    assert {"cell_classifier.1.weight", "cell_classifier.3.bias"} <= set(fresh)
    assert torch.equal(with_head.state_dict()["decoder1.0.block.1.weight"], ckpt["model_state_dict"]["decoder1.0.block.1.weight"])


def test_a_frozen_encoder_does_not_move_while_the_decoder_learns(tmp_path):
    ds = PatchDataset(drawn_patches(tmp_path / "data", n=2))
    model = build_model("tiny", n_types=3, n_tissues=1, img_size=128)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train(model, ds, ds, tmp_path / "run", TrainSettings(epochs=1, batch_size=2, freeze_encoder_epochs=1))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("encoder."))
    assert not torch.equal(before["decoder0.0.block.0.weight"], after["decoder0.0.block.0.weight"])
