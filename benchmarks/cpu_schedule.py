"""The CPU training schedule on a platform home's training dataset: minutes, peak memory and test metrics.

    .venv/bin/python benchmarks/cpu_schedule.py --home sthelar_home --out benchmarks/results/cpu_schedule.json

Each grouping trains in a fresh process with sthelar_platform/config/training.yaml's ``cpu`` schedule (as the
``cellvit_*`` assets do) and is then evaluated on the test split (as ``model_evaluation`` does).
Options override single schedule keys, for the experiments the config comments cite.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import resource
import tempfile
import time
from pathlib import Path

from sthelar_platform.core.atomic import write_text_atomic


def _run(home: str, grouping: str, overrides: dict, training_overrides: dict, queue: mp.Queue) -> None:
    import torch

    from sthelar_platform.core.config import load_config
    from sthelar_platform.model.cellvit.training import cpu_bf16_supported
    from sthelar_platform.model.evaluation import evaluate_model, mean_class_f1
    from sthelar_platform.model.training import train_cellvit

    cfg = load_config("training")
    if overrides or training_overrides:
        schedule = cfg.training.schedules["cpu"].model_copy(update=overrides)
        cfg = cfg.model_copy(update={"training": cfg.training.model_copy(
            update={**training_overrides, "schedules": {**cfg.training.schedules, "cpu": schedule}})})
    dataset = Path(home) / "exports" / "dataset"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "model"
        out.mkdir()
        t0 = time.perf_counter()
        card, history = train_cellvit(dataset, grouping, cfg, "cpu", Path(tmp) / "work", out, "bench", "bench")
        train_s = time.perf_counter() - t0
        result = evaluate_model(out / "best.pt", dataset, cfg, "cpu")
    o = result["overall"]
    f1 = {k: round(v["f1"], 4) for k, v in o["per_class"].items() if v["support"] > 0}
    queue.put({"grouping": grouping, "size": card["size"], "magnification": card["magnification"],
               "epochs": len(history), "n_train_patches": card["n_train_patches"],
               "n_train_samples": card["n_train_samples"], "train_s": round(train_s, 1),
               "train_samples_per_s": round(card["train_patches_per_s"], 2), "bf16": cpu_bf16_supported(),
               "torch_threads": torch.get_num_threads(), "detection_f1": round(o["detection_f1"], 4),
               "bpq": round(o["bpq"], 4), "mpq": round(o["mpq"], 4),
               "mean_class_f1": round(mean_class_f1(o), 4), "class_f1": f1,
               "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)})


def main() -> None:
    """Train and evaluate each grouping with the CPU schedule; write the JSON."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--home", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--groupings", nargs="+", default=["detailed", "grouped"])
    ap.add_argument("--override", action="append", default=[], metavar="KEY=JSON",
                    help="a cpu schedule key, e.g. epochs=8 or magnification=\"40x\"")
    ap.add_argument("--training-override", action="append", default=[], metavar="KEY=JSON",
                    help="a key of training.yaml's training section, e.g. augment=false")
    args = ap.parse_args()
    overrides = {k: json.loads(v) for k, v in (o.split("=", 1) for o in args.override)}
    training_overrides = {k: json.loads(v) for k, v in (o.split("=", 1) for o in args.training_override)}
    rows = []
    ctx = mp.get_context("spawn")
    for grouping in args.groupings:
        queue = ctx.Queue()
        proc = ctx.Process(target=_run, args=(str(args.home), grouping, overrides, training_overrides, queue))
        proc.start()
        rows.append(queue.get())
        proc.join()
        print(json.dumps(rows[-1]), flush=True)
    write_text_atomic(args.out, json.dumps({"benchmark": "cpu_schedule", "overrides": overrides,
        "training_overrides": training_overrides, "machine": {
        "cpus": mp.cpu_count(), "platform": platform.platform()}, "models": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
