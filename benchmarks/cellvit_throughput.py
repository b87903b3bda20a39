"""CellViT training and inference throughput (patches/s) and peak memory, per model size and device.

Usage: python benchmarks/cellvit_throughput.py [--size tiny --size vit_s] [--device cpu|cuda] [--batch N]
       [--steps N] [--out FILE.json]

Patches are drawn nuclei on an H&E-like background (256 px, as the training dataset's), so the
post-processing sees realistic instance counts. Training = forward + loss + backward + AdamW step
(AMP on CUDA); inference = forward alone and forward + HoVer-Net post-processing, as the
slide_predictions asset runs it. Prints and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._report import peak_rss_mb  # noqa: E402
from sthelar_platform.model.cellvit.inference import LoadedModel  # noqa: E402
from sthelar_platform.model.cellvit.losses import cellvit_loss  # noqa: E402
from sthelar_platform.model.cellvit.model import build_model  # noqa: E402
from sthelar_platform.model.cellvit.targets import patch_targets  # noqa: E402


def drawn_batch(n: int, seed: int = 0) -> tuple[np.ndarray, list[dict[str, np.ndarray]]]:
    """Patches with drawn nuclei and their training targets, so post-processing has instances to find."""
    rng = np.random.default_rng(seed)
    imgs, targets = [], []
    for _ in range(n):
        img = np.full((256, 256, 3), (230, 160, 220), np.uint8)
        inst = np.zeros((256, 256), np.int32)
        types = np.zeros((256, 256), np.int32)
        for k in range(1, 41):
            x, y = (int(v) for v in rng.integers(8, 248, 2))
            r = int(rng.integers(5, 11))
            cv2.circle(img, (x, y), r, (70, 40, 120), -1)
            cv2.circle(inst, (x, y), r, k, -1)
            cv2.circle(types, (x, y), r, int(rng.integers(1, 10)), -1)
        imgs.append(img)
        targets.append(patch_targets(inst, types))
    return np.stack(imgs), targets


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_size(size: str, device: str, batch: int, steps: int) -> dict:
    """Training and inference throughput of one model size on one device (patches/s, peak memory)."""
    torch.manual_seed(0)
    model = build_model(size, n_types=10, n_tissues=3).to(device)
    imgs, tg = drawn_batch(batch)
    x = torch.from_numpy(((imgs.astype(np.float32) / 255 - 0.5) / 0.5).transpose(0, 3, 1, 2).copy()).to(device)
    data = {"image": x, "np": torch.from_numpy(np.stack([t["np"] for t in tg])).to(device),
            "hv": torch.from_numpy(np.stack([t["hv"] for t in tg])).to(device),
            "nt": torch.from_numpy(np.stack([t["nt"] for t in tg])).to(device),
            "tissue": torch.zeros(batch, dtype=torch.long, device=device)}
    amp = device.startswith("cuda")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler("cuda") if amp else None
    if amp:
        torch.cuda.reset_peak_memory_stats()

    def train_step() -> None:
        with torch.autocast("cuda", enabled=amp, dtype=torch.bfloat16 if amp else torch.float32):
            out = model(data["image"])
        loss, _ = cellvit_loss({k: v.float() for k, v in out.items()}, data)
        opt.zero_grad(set_to_none=True)
        if scaler:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()

    model.train()
    train_step()  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        train_step()
    _sync(device)
    train_pps = steps * batch / (time.perf_counter() - t0)

    model.eval()
    with torch.no_grad(), torch.autocast("cuda", enabled=amp, dtype=torch.bfloat16 if amp else torch.float32):
        model(x)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            model(x)
        _sync(device)
        fwd_pps = steps * batch / (time.perf_counter() - t0)
    loaded = LoadedModel(model, {}, device)
    t0 = time.perf_counter()
    n_inst = 0
    for _ in range(max(1, steps // 2)):
        n_inst += sum(len(p.types) for p in loaded.predict(imgs))
    full_pps = max(1, steps // 2) * batch / (time.perf_counter() - t0)
    return {"size": size, "device": device, "batch": batch, "steps": steps,
            "n_parameters": int(sum(p.numel() for p in model.parameters())),
            "train_patches_per_s": round(train_pps, 2), "inference_forward_patches_per_s": round(fwd_pps, 2),
            "inference_with_postprocess_patches_per_s": round(full_pps, 2),
            "instances_per_patch": round(n_inst / (max(1, steps // 2) * batch), 1),
            "peak_cuda_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if amp else None}


def main(argv: list[str] | None = None) -> int:
    """Run the throughput benchmark and write its JSON report."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", action="append", choices=["tiny", "vit_s", "vit_b"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    results = [bench_size(s, args.device, args.batch, args.steps) for s in (args.size or ["tiny", "vit_s"])]
    report = {"benchmark": "cellvit_throughput", "results": results,
              "peak_rss_mb": peak_rss_mb(),
              "machine": {"torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version(),
                          "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
