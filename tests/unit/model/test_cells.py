"""The per-nucleus type head: exact pooling, majority targets, training and its use at inference."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from drawn_patches import drawn_patches

from sthelar_platform.model.cellvit.cells import instances, majority_types, pool_features
from sthelar_platform.model.cellvit.data import PatchDataset
from sthelar_platform.model.cellvit.inference import LoadedModel
from sthelar_platform.model.cellvit.losses import cellvit_loss
from sthelar_platform.model.cellvit.model import build_model
from sthelar_platform.model.cellvit.training import TrainSettings, train
from sthelar_platform.tiling.patches import load_labels


def _maps() -> tuple[torch.Tensor, torch.Tensor]:
    inst = torch.zeros(3, 64, 64, dtype=torch.long)
    inst[0, 2:9, 3:8] = 4           # labels need not be contiguous, nor start at 1
    inst[0, 20:31, 40:52] = 9
    inst[2, 57:64, 0:13] = 1        # cut by the window edge
    types = (inst > 0).long() * 2
    types[0, 20:31, 40:52] = 3
    types[0, 20:22, 40:52] = 1      # a minority of another class inside nucleus 9
    return inst, types


def test_nuclei_are_numbered_by_image_then_label():
    inst, _ = _maps()
    cells = instances(inst)
    assert cells.n == 3 and cells.image.tolist() == [0, 0, 2] and cells.label.tolist() == [4, 9, 1]
    assert torch.bincount(cells.ids).tolist() == [35, 132, 91]
    assert instances(torch.zeros(2, 16, 16, dtype=torch.long)).n == 0


def test_pooling_is_the_mean_of_the_nearest_upsampled_features_over_each_nucleus():
    inst, _ = _maps()
    cells = instances(inst)
    features = [torch.randn(3, c, 64 // s, 64 // s) for c, s in ((4, 2), (5, 4), (6, 8), (7, 16))]
    expected = []
    for f in features:
        up = F.interpolate(f, size=(64, 64), mode="nearest")
        expected.append(torch.stack([up[b][:, inst[b] == lb].mean(1)
                                     for b, lb in zip(cells.image.tolist(), cells.label.tolist(), strict=True)]))
    assert torch.allclose(pool_features(features, cells), torch.cat(expected, 1), atol=1e-5)


def test_a_nucleus_target_is_its_majority_class_and_unlabelled_nuclei_are_ignored():
    inst, types = _maps()
    types[2] = 0  # nucleus pixels without a class
    assert majority_types(types, instances(inst), 4).tolist() == [2, 3, 0]
    model = build_model("conv_small", n_types=4, n_tissues=1, cell_head=True)
    out = model(torch.randn(3, 3, 64, 64), inst)
    assert out["cell"].shape == (3, 3)
    batch = {"np": (inst > 0).long(), "hv": torch.zeros(3, 2, 64, 64), "nt": types,
             "tissue": torch.zeros(3, dtype=torch.long), "inst": inst}
    _, parts = cellvit_loss({k: v.float() for k, v in out.items()}, batch, None, torch.ones(4))
    logits = out["cell"][:2].detach().float()
    assert parts["cell_ce"] == pytest.approx(float(F.cross_entropy(logits, torch.tensor([1, 2]))), rel=1e-4)
    empty = {**batch, "inst": torch.zeros_like(inst)}
    _, parts = cellvit_loss({k: v.float() for k, v in model(torch.randn(3, 3, 64, 64), empty["inst"]).items()}, empty)
    assert parts.get("cell_ce", 0.0) == 0.0


def test_the_official_architectures_have_no_cell_head_unless_asked():
    assert not any(k.startswith("cell_classifier") for k in build_model("tiny", 3, 1).state_dict())
    assert "cell" not in build_model("conv_small", 3, 1)(torch.randn(1, 3, 64, 64), torch.ones(1, 64, 64, dtype=torch.long))


def test_a_cell_head_model_may_drop_the_type_maps():
    inst, types = _maps()
    model = build_model("conv_small", n_types=4, n_tissues=1, cell_head=True, type_maps=False)
    assert not any(k.startswith("nuclei_type_maps_decoder") for k in model.state_dict())
    out = model(torch.randn(3, 3, 64, 64), inst)
    assert "nt" not in out and out["cell"].shape == (3, 3)
    batch = {"np": (inst > 0).long(), "hv": torch.zeros(3, 2, 64, 64), "nt": types,
             "tissue": torch.zeros(3, dtype=torch.long), "inst": inst}
    _, parts = cellvit_loss({k: v.float() for k, v in out.items()}, batch)
    assert "cell_ce" in parts and not any(k.startswith("nt_") for k in parts)
    with pytest.raises(ValueError, match="needs the cell head"):
        build_model("conv_small", n_types=4, n_tissues=1, type_maps=False)


@pytest.mark.slow  # 25 epochs of training
def test_the_cell_head_learns_types_and_decides_them_at_inference(tmp_path):
    torch.set_num_threads(2)
    records = drawn_patches(tmp_path / "data", n=6)
    ds = PatchDataset(records)
    torch.manual_seed(0)
    model = build_model("conv_small", n_types=3, n_tissues=1, cell_head=True, type_maps=False)  # the CPU schedule's
    train(model, ds, ds, tmp_path / "run", TrainSettings(epochs=25, batch_size=3, lr=4e-3, patience=100, amp=False),
          class_weights=torch.ones(3))
    loaded = LoadedModel(model.eval(), {"magnification": "20x"}, postprocess={"min_area_px": 3, "sobel_ksize": 11,
                                                                             "opening_px": 3})
    hits = total = 0
    for r in records:
        rgb = np.ascontiguousarray(ds._read(records.index(r))[0])
        truth = load_labels(r.labels)
        pred = loaded.predict(rgb[None])[0]
        for k in range(1, int(pred.inst.max()) + 1):
            own = pred.inst == k
            if own.sum() and truth["type_map"][own].max() > 0:
                total += 1
                hits += int(pred.types[k - 1] == np.bincount(truth["type_map"][own]).argmax())
    assert total >= 20 and hits / total >= 0.9, (hits, total)
    with torch.no_grad():  # the types come from the cell head, not the NT vote: forcing its bias forces them
        model.cell_classifier[-1].bias.copy_(torch.tensor([-1e4, 1e4]))
    forced = loaded.predict(np.ascontiguousarray(ds._read(0)[0])[None])[0]
    assert len(forced.types) and set(forced.types[np.bincount(forced.inst.ravel())[1:] > 0].tolist()) == {2}
    assert np.allclose(forced.type_confidence[forced.types > 0], 1.0)
