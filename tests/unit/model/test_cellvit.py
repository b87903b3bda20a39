"""CellViT in plain torch: shapes, targets, post-processing, checkpoints and the CPU overfit check."""

import cv2
import numpy as np
import pytest
import torch
from drawn_patches import drawn_patches

from sthelar_platform.core.errors import InputError
from sthelar_platform.model.cellvit.data import PatchDataset
from sthelar_platform.model.cellvit.model import build_model
from sthelar_platform.model.cellvit.postprocess import instance_types, instances_from_maps
from sthelar_platform.model.cellvit.targets import hv_maps
from sthelar_platform.model.cellvit.training import (
    TrainingDiverged,
    TrainSettings,
    autocast_for,
    cpu_bf16_supported,
    learning_rate,
    load_weights,
    train,
)
from sthelar_platform.tiling.agreement import patch_agreement


@pytest.mark.parametrize("size", ["tiny", "conv_small"])
def test_model_outputs_have_the_heads_shapes(size):
    m = build_model(size, n_types=10, n_tissues=3)
    out = m(torch.randn(2, 3, 256, 256))
    assert out["np"].shape == (2, 2, 256, 256) and out["hv"].shape == (2, 2, 256, 256)
    assert out["nt"].shape == (2, 10, 256, 256) and out["tissue"].shape == (2, 3)


def test_hv_targets_and_postprocessing_split_touching_nuclei():
    inst = np.zeros((128, 128), np.int32)
    cv2.circle(inst, (50, 60), 14, 1, -1)
    cv2.circle(inst, (76, 60), 14, 2, -1)
    hv = hv_maps(inst)
    assert hv.min() == -1 and hv.max() == 1 and (hv[:, inst == 0] == 0).all()
    out = instances_from_maps((inst > 0).astype(float), hv)
    assert out.max() == 2 and patch_agreement(inst, out, 12)["bpq"] > 0.9
    types, xy = instance_types(out, np.where(inst == 1, 3, np.where(inst == 2, 5, 0)), 10)
    assert sorted(types.tolist()) == [3, 5] and xy.shape == (2, 2)


def _bpq(model, ds):
    model.eval()
    scores = []
    with torch.no_grad():
        for i in range(len(ds)):
            b = ds[i]
            out = model(b["image"][None])
            inst = instances_from_maps(out["np"].softmax(1)[0, 1].numpy(), torch.tanh(out["hv"])[0].numpy())
            scores.append(patch_agreement(b["inst"].numpy(), inst, 12)["bpq"])
    return float(np.mean(scores))


@pytest.mark.slow  # 30 epochs of training
def test_tiny_config_overfits_a_handful_ofdrawn_patches(tmp_path):
    torch.set_num_threads(2)
    records = drawn_patches(tmp_path / "data")
    ds = PatchDataset(records)
    torch.manual_seed(0)  # the initial weights too, not only the training run, are seeded (as the assets do)
    model = build_model("tiny", n_types=3, n_tissues=1, img_size=128)
    before = _bpq(model, ds)
    res = train(model, ds, ds, tmp_path / "run", TrainSettings(epochs=30, batch_size=4, lr=2e-3, patience=100))
    losses = [h["train_loss"] for h in res.history]
    after = _bpq(model, ds)
    assert losses[-1] < 0.5 * losses[0], losses
    assert after > before + 0.3 and after > 0.5, (before, after)


def test_resume_continues_from_the_last_checkpoint(tmp_path):
    ds = PatchDataset(drawn_patches(tmp_path / "data", n=2))
    run = tmp_path / "run"
    m = build_model("tiny", n_types=3, n_tissues=1, img_size=128)
    first = train(m, ds, ds, run, TrainSettings(epochs=2, batch_size=2))
    assert first.epochs_run == 2 and first.resumed_from is None
    m2 = build_model("tiny", n_types=3, n_tissues=1, img_size=128)  # a new process after a kill
    second = train(m2, ds, ds, run, TrainSettings(epochs=3, batch_size=2))
    assert second.resumed_from == 2 and second.epochs_run == 1 and len(second.history) == 3


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path):
    ds = PatchDataset(drawn_patches(tmp_path / "data", n=2))
    run = tmp_path / "run"
    train(build_model("tiny", n_types=3, n_tissues=1, img_size=128), ds, ds, run, TrainSettings(epochs=1, batch_size=2))
    good = (run / "last.pt").read_bytes()
    diverging = TrainSettings(epochs=2, batch_size=2, loss_weights={"np_dice": float("nan")})
    with pytest.raises(TrainingDiverged, match="loss is nan"):
        train(build_model("tiny", n_types=3, n_tissues=1, img_size=128), ds, ds, run, diverging)
    assert (run / "last.pt").read_bytes() == good and not list(run.glob("*.tmp-*"))


def test_checkpoint_for_other_classes_or_corrupt_file_is_a_clear_error(tmp_path):
    ds = PatchDataset(drawn_patches(tmp_path / "data", n=1))
    m = build_model("tiny", n_types=3, n_tissues=1, img_size=128)
    train(m, ds, ds, tmp_path / "run", TrainSettings(epochs=1, batch_size=1))
    other = build_model("tiny", n_types=10, n_tissues=1, img_size=128)
    with pytest.raises(InputError, match="does not fit this model.*nuclei_type_maps_decoder.*Fix: use a checkpoint trained"):
        load_weights(other, tmp_path / "run" / "best.pt")
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes((tmp_path / "run" / "best.pt").read_bytes()[:1000])
    with pytest.raises(InputError, match="not a readable checkpoint"):
        load_weights(m, bad)


def test_empty_split_is_a_clear_error():
    with pytest.raises(ValueError, match="at least one patch"):  # split_records names the empty split first
        PatchDataset([])


def test_evaluation_by_hand():
    from sthelar_platform.model.cellvit.evaluation import EvaluationTotals

    inst = np.zeros((64, 64), np.int32)
    types = np.zeros((64, 64), np.int32)
    inst[5:15, 5:15], types[5:15, 5:15] = 1, 1
    inst[30:40, 30:40], types[30:40, 30:40] = 2, 2
    perfect = EvaluationTotals(n_classes=2, radius_px=12)
    perfect.add(inst, types, inst, types)
    r = perfect.result(("a", "b"))
    assert r["detection_f1"] == 1 and r["bpq"] == 1 and r["mpq"] == 1
    assert r["per_class"]["a"]["f1"] == 1 and r["per_class"]["b"]["support"] == 1
    swapped = EvaluationTotals(n_classes=2, radius_px=12)
    swapped.add(inst, types, inst, np.where(types == 1, 2, np.where(types == 2, 1, 0)))
    s = swapped.result(("a", "b"))
    assert s["detection_f1"] == 1 and s["bpq"] == 1 and s["mpq"] == 0
    # paired, wrong type: TP_a = TN_a = 0, FP_a = FN_a = 1 -> F1 = 0
    assert s["per_class"]["a"]["f1"] == 0


def test_mpq_skips_classes_absent_from_the_ground_truth():
    """PanNuke's convention: a class only predicted in a patch does not pull its mPQ down."""
    from sthelar_platform.model.cellvit.evaluation import EvaluationTotals

    inst = np.zeros((64, 64), np.int32)
    inst[5:15, 5:15], inst[30:40, 30:40] = 1, 2
    truth_types = np.where(inst > 0, 1, 0)
    pred_types = np.where(inst == 2, 2, truth_types)  # the second nucleus predicted as class 2, absent in truth
    totals = EvaluationTotals(n_classes=2, radius_px=12)
    totals.add(inst, truth_types, inst, pred_types)
    r = totals.result(("a", "b"))
    assert r["mpq"] == pytest.approx(2 / 3)  # class a only: 1 TP, 1 FN -> DQ 2/3, SQ 1; class b not averaged in


def test_postprocessing_follows_the_model_magnification():
    from sthelar_platform.model.cellvit.inference import LoadedModel

    loaded = LoadedModel(build_model("tiny", 3, 1), {"magnification": "20x"}, postprocess={
        "min_area_px": {"40x": 10, "20x": 3}, "sobel_ksize": {"40x": 21, "20x": 11}, "edge_threshold": 0.4})
    assert loaded.postprocess_args == {"min_area_px": 3, "sobel_ksize": 11, "edge_threshold": 0.4}
    loaded.postprocess["opening_px"] = {"40x": 5, "20x": 3}
    assert loaded.postprocess_args["opening_px"] == 3
    del loaded.postprocess["opening_px"]
    loaded.meta["magnification"] = "40x"
    assert loaded.postprocess_args == {"min_area_px": 10, "sobel_ksize": 21, "edge_threshold": 0.4}
    small = np.zeros((64, 64), np.int32)
    cv2.circle(small, (20, 20), 5, 1, -1)  # a 20x nucleus (5.5 µm across)
    assert instances_from_maps(small.astype(float), hv_maps(small), min_area_px=3, sobel_ksize=11).max() == 1


def test_windows_tile_every_patch_exactly_once(tmp_path):
    records = drawn_patches(tmp_path / "data")
    whole, windows = PatchDataset(records), PatchDataset(records, window_px=64)
    assert len(windows) == len(records) * 4  # the drawn patches are 128 px
    first = whole[0]
    tiles = [windows[i] for i in range(4)]
    rebuilt = torch.cat([torch.cat([tiles[0]["image"], tiles[1]["image"]], 2),
                         torch.cat([tiles[2]["image"], tiles[3]["image"]], 2)], 1)
    assert torch.equal(rebuilt, first["image"])
    assert sum(int(t["np"].sum()) for t in tiles) == int(first["np"].sum())
    with pytest.raises(InputError, match="window_px 100"):
        PatchDataset(records, window_px=100)


def test_cosine_learning_rate_is_a_function_of_the_position_alone():
    s = TrainSettings(epochs=4, lr=0.004, lr_schedule="cosine")
    assert learning_rate(s, 0, 0, 10) == pytest.approx(0.004)
    assert learning_rate(s, 2, 0, 10) == pytest.approx(0.002)  # half way
    assert learning_rate(s, 3, 9, 10) < 0.0001
    steps = [learning_rate(s, e, b, 10) for e in range(4) for b in range(10)]
    assert all(a > b for a, b in zip(steps, steps[1:], strict=False))
    assert learning_rate(TrainSettings(lr=0.004), 3, 9, 10) == 0.004


def test_cpu_mixed_precision_follows_the_cpu():
    m = build_model("conv_small", n_types=3, n_tissues=1)
    with autocast_for(TrainSettings(amp=True)):
        out = m(torch.randn(1, 3, 64, 64))
    assert out["np"].dtype == (torch.bfloat16 if cpu_bf16_supported() else torch.float32)
    with autocast_for(TrainSettings(amp=False)):
        assert m(torch.randn(1, 3, 64, 64))["np"].dtype == torch.float32


def test_model_card_says_what_the_split_holds_out():
    from sthelar_platform.model.evaluation import model_card_md

    overall = {"detection_f1": 0.9, "bpq": 0.7, "mpq": 0.5, "per_class": {}}
    result = {"model_id": "m", "grouping": "detailed", "split": "test", "n_patches": 10, "overall": overall,
              "tissue_accuracy": 1.0, "per_tissue": {}}
    assert "held-out slides" in model_card_md({}, {**result, "split_by": "slide"})
    block = model_card_md({}, {**result, "split_by": "block"})
    assert "held-out slides" not in block and "spatial blocks" in block


def test_mean_class_f1_counts_the_classes_the_ground_truth_holds():
    from sthelar_platform.model.evaluation import evaluation_rows, mean_class_f1

    overall = {"detection_f1": 0.9, "bpq": 0.7, "mpq": 0.5,
               "per_class": {"a": {"f1": 0.8, "support": 10}, "b": {"f1": 0.4, "support": 3}, "c": {"f1": 0.0, "support": 0}}}
    assert mean_class_f1(overall) == pytest.approx(0.6)
    rows = evaluation_rows({"model_id": "m", "grouping": "g", "split": "test", "overall": overall, "per_tissue": {},
                            "tissue_accuracy": 1.0})
    assert [r["value"] for r in rows if r["metric"] == "mean_class_f1"] == [pytest.approx(0.6)]
