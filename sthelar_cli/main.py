"""`sthelar` command line: synthetic data, slide registration, runs, UI and benchmarks."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tqdm import tqdm

from sthelar_cli.bench import STAGES as BENCH_STAGES
from sthelar_platform.core.errors import InputError
from sthelar_platform.synth.flavours import FLAVOURS, QUIRKS, SIZES

DEFAULT_HOME = "./sthelar_home"


def _home(args: argparse.Namespace):
    from sthelar_cli.runner import use_home

    return use_home(args.home or os.environ.get("STHELAR_HOME", DEFAULT_HOME))


WORLD_HELP = ("a `worlds` entry of sthelar_platform/config/synthetic.yaml: simple, or realistic (spillover, doublets, ambient RNA, "
              "slide batch effects, an atlas missing a category and naming labels its own way); default: the size's")


def cmd_synth(args: argparse.Namespace) -> int:
    """`sthelar synth`: write SYNTHETIC slides, atlases and a manifest."""
    from sthelar_platform.core.config import load_categories, load_synthetic
    from sthelar_platform.synth import synthesize_cohort

    bar = tqdm(desc=f"synthetic {args.size} slides", unit="step", bar_format="{desc}: {n} steps [{elapsed}] {postfix}")

    def progress(msg: str) -> None:
        bar.set_postfix_str(msg)
        bar.update()

    manifest = synthesize_cohort(args.out, args.size, load_synthetic(), load_categories(), seed=args.seed, progress=progress,
                                 xoa=args.xoa, quirks=tuple(args.quirk or ()), world=args.world)
    bar.close()
    print(f"SYNTHETIC {args.size} slides written; manifest: {manifest}")
    return 0


def _add(layout, manifest: str | None, folder: str | None, tissue: str | None, slide_id: str | None, replace: bool) -> list:
    from sthelar_cli.runner import register_partitions
    from sthelar_platform.ingest.manifest import SlideCatalog, load_manifest, specs_from_folder

    if manifest:
        specs = load_manifest(manifest)
    elif folder:
        if not tissue:
            raise InputError(folder, "no tissue given for the slide folder", "pass --tissue (e.g. --tissue breast)")
        specs = [specs_from_folder(folder, tissue, slide_id)]
    else:  # argparse requires one of them; a caller from Python may not
        raise ValueError("pass a manifest or a folder")
    SlideCatalog(layout.catalog).add(specs, replace=replace)
    register_partitions([s.slide_id for s in specs])
    return specs


def cmd_slides(args: argparse.Namespace) -> int:
    """`sthelar slides add|list`: register slides in the catalog (validated) and as partitions."""
    from sthelar_platform.ingest.manifest import SlideCatalog

    layout = _home(args)
    if args.slides_cmd == "add":
        specs = _add(layout, args.manifest, args.folder, args.tissue, args.slide_id, args.replace)
        for s in specs:
            print(f"registered {s.slide_id} ({s.tissue}) -> {s.xenium_dir}")
        return 0
    specs = SlideCatalog(layout.catalog).list()
    if not specs:
        print(f"no slides registered in {layout.catalog}; run `sthelar slides add --manifest FILE`")
    for s in specs:
        print(f"{s.slide_id}\t{s.tissue}\t{'SYNTHETIC' if s.synthetic else 'real'}\t{s.xenium_dir}\t{s.he_image}")
    return 0


def _materialize(slide_ids: list[str], selection: list[str] | None, job_name: str = "slide_pipeline") -> bool:
    from sthelar_cli.runner import materialize_slide

    ok = True
    for sid in tqdm(slide_ids, desc=job_name, unit="slide"):
        t0 = time.perf_counter()
        out = materialize_slide(sid, selection, job_name)
        status = "ok" if out.success else f"FAILED ({', '.join(out.failed_steps)})"
        tqdm.write(f"{sid}: {status} in {time.perf_counter() - t0:.1f}s  run {out.run_id}")
        ok &= out.success
    return ok


def cmd_materialize(args: argparse.Namespace) -> int:
    """`sthelar materialize`: run the slide pipeline for some or all registered slides."""
    from sthelar_platform.ingest.manifest import SlideCatalog

    layout = _home(args)
    slides = args.slide or [s.slide_id for s in SlideCatalog(layout.catalog).list()]
    if not slides:
        raise InputError(layout.catalog, "no slides registered", "run `sthelar slides add --manifest FILE` first")
    return 0 if _materialize(slides, args.select) else 1


def cmd_demo(args: argparse.Namespace) -> int:
    """`sthelar demo`: generate the demo cohort once, then run every job on it."""
    from sthelar_platform.core.config import load_categories, load_synthetic
    from sthelar_platform.synth import synthesize_cohort

    layout = _home(args)
    t0 = time.perf_counter()
    synthetic = load_synthetic()
    world = args.world or synthetic.sizes[args.size].world
    # each world lands in its own folder, so a home made before the demo turned realistic keeps its slides apart
    landing = layout.landing / (f"synthetic_{args.size}" if world == "simple" else f"synthetic_{args.size}_{world}")
    manifest = landing / "manifest.yaml"
    if not manifest.exists():
        print(f"generating SYNTHETIC {args.size} slides ({world} world) in {landing} ...")
        with tqdm(desc="synthesis", unit="step") as bar:
            def progress(msg: str) -> None:
                bar.set_postfix_str(msg)
                bar.update()

            synthesize_cohort(landing, args.size, synthetic, load_categories(), seed=args.seed, progress=progress,
                              world=world)
    else:
        print(f"reusing SYNTHETIC slides in {landing}")
    specs = _add(layout, str(manifest), None, None, None, replace=True)
    ok = _materialize([s.slide_id for s in specs], None)
    from sthelar_cli.runner import materialize_cohort

    if ok:
        t1 = time.perf_counter()
        cohort = materialize_cohort()
        print(f"training dataset, models, evaluation: {'ok' if cohort.success else 'FAILED'} in "
              f"{time.perf_counter() - t1:.1f}s  run {cohort.run_id}")
        ok &= cohort.success
    if ok:
        ok &= _materialize([s.slide_id for s in specs], None, "predictions_job")
        _print_model_summary(layout)
    qc = materialize_cohort("qc_job") if ok else None
    if qc is not None:
        print(f"QC models and dashboard: {'ok' if qc.success else 'FAILED'}  run {qc.run_id}")
        ok &= qc.success
    print(f"\nDemo {'finished' if ok else 'FAILED'} in {time.perf_counter() - t0:.0f}s.")
    print(f"  outputs:        {layout.warehouse}/<stage>/<slide_id>/")
    print(f"  exports:        {layout.exports}/<slide_id>/ (cellvit/, pannuke/, sdata.zarr + he_image.ome.tif, cell_labels.parquet)")
    print(f"  dataset:        {layout.exports}/dataset/<mag>/<grouping>/ (splits.csv, dataset_card.json)")
    print(f"  models:         {layout.models}/cellvit_<grouping>/ (best.pt, model.json), evaluation/")
    print(f"  predictions:    {layout.warehouse}/slide_predictions/<slide_id>/")
    print(f"  QC dashboard:   {layout.dashboards}/site/index.html   (serve it: sthelar dashboard)")
    print(f"  lineage / QC:   {layout.lineage_db}")
    print(f"  slide catalog:  {layout.catalog}")
    print("  open the UI:    make ui   (http://127.0.0.1:3000, localhost only)")
    return 0 if ok else 1


def _print_model_summary(layout) -> None:
    import json

    path = layout.models / "evaluation" / "summary.json"
    if not path.exists():
        return
    print("\nheld-out evaluation (test split):")
    for grouping, r in json.loads(path.read_text()).items():
        class_f1 = f"  mean class F1 {r['mean_class_f1']:.3f}" if "mean_class_f1" in r else ""
        print(f"  {grouping:9s} detection F1 {r['detection_f1']:.3f}  bPQ {r['bpq']:.3f}  mPQ {r['mpq']:.3f}{class_f1}  "
              f"({r['n_patches']} patches)")


def cmd_dashboard(args: argparse.Namespace) -> int:
    """Refresh the QC models and site (unless --no-build), then serve the site on localhost."""
    import functools
    import http.server

    layout = _home(args)
    site = layout.dashboards / "site"
    if not args.no_build:
        from sthelar_cli.runner import materialize_cohort

        out = materialize_cohort("qc_job")
        if not out.success:
            print(f"QC refresh FAILED ({', '.join(out.failed_steps)}); run {out.run_id}", file=sys.stderr)
            if not (site / "index.html").exists():
                return 1
            print("serving the last good dashboard", file=sys.stderr)
    if not (site / "index.html").exists():
        raise InputError(site, "no dashboard built yet", "run `sthelar dashboard` without --no-build")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer((args.host, args.port), handler)
    # stopping never waits on a request thread a browser keeps open (a terminated test server hung 30 s)
    server.daemon_threads, server.block_on_close = True, False
    print(f"QC dashboard on http://{args.host}:{server.server_address[1]}/  (Ctrl-C to stop)", flush=True)
    # the in-process QC refresh may leave Dagster's own SIGTERM handler behind: terminating must stop serving
    signal.signal(signal.SIGTERM, _stop_serving)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def _stop_serving(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def cmd_ui(args: argparse.Namespace) -> int:
    """`sthelar ui`: the Dagster webserver and daemon on localhost."""
    from sthelar_cli.runner import init_instance_storage

    _home(args)
    init_instance_storage()
    root = Path(__file__).resolve().parent.parent
    cmd = [sys.executable, "-m", "dagster", "dev", "-w", str(root / "workspace.yaml"), "-h", args.host, "-p", str(args.port)]
    print(f"Dagster UI on http://{args.host}:{args.port}  (DAGSTER_HOME={os.environ['DAGSTER_HOME']})")
    return subprocess.call(cmd, cwd=root)


def cmd_bench(args: argparse.Namespace) -> int:
    """`sthelar bench`: each stage's assets on the size's SYNTHETIC slide (sthelar_cli/bench.py)."""
    from sthelar_cli.bench import run_benchmarks

    layout = _home(args)
    for r in run_benchmarks(layout, size=args.size, stages=args.stage, seed=args.seed):
        print(f"{r['stage']}: {r['wall_s']:.1f}s, {r['throughput']:.0f} {r['throughput_unit']}, peak RSS {r['peak_rss_mb']:.0f} MB")
    print(f"JSON in {layout.bench / args.size}/")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The `sthelar` argument parser."""
    p = argparse.ArgumentParser(prog="sthelar", description="STHELAR platform: Xenium + H&E -> annotated histology data.")
    p.add_argument("--home", help=f"storage root (default $STHELAR_HOME or {DEFAULT_HOME})")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("synth", help="write SYNTHETIC Xenium-format slides, H&E, references and a manifest")
    s.add_argument("--size", choices=list(SIZES), default="demo")
    s.add_argument("--out", required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--xoa", choices=list(FLAVOURS),
                   help="write the bundles in this Xenium output generation's exact layout (default: the canonical "
                        "2.x bundle the demo uses)")
    s.add_argument("--quirk", action="append", choices=list(QUIRKS),
                   help="odd cases seen in the field: rnd (version 'R&D'), bytes (binary feature_name), "
                        "blank (BLANK_/antisense_ probes), macos (._* files); repeatable")
    s.add_argument("--world", help=WORLD_HELP)
    s.set_defaults(func=cmd_synth)

    d = sub.add_parser("demo", help="generate the demo slides (once) and materialize everything for them")
    d.add_argument("--size", choices=["tiny", "demo"], default="demo")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--world", help=WORLD_HELP)
    d.set_defaults(func=cmd_demo)

    u = sub.add_parser("ui", help="open the Dagster UI (binds to localhost by default)")
    u.add_argument("--host", default="127.0.0.1")
    u.add_argument("--port", type=int, default=3000)
    u.set_defaults(func=cmd_ui)

    db = sub.add_parser("dashboard", help="refresh the dbt QC models and dashboard, then serve it (localhost only)")
    db.add_argument("--host", default="127.0.0.1")
    db.add_argument("--port", type=int, default=8765)
    db.add_argument("--no-build", action="store_true", help="serve the last built site without refreshing")
    db.set_defaults(func=cmd_dashboard)

    sl = sub.add_parser("slides", help="register or list slides")
    slsub = sl.add_subparsers(dest="slides_cmd", required=True)
    a = slsub.add_parser("add", help="register slides from a manifest (YAML/CSV) or one slide folder")
    source = a.add_mutually_exclusive_group(required=True)
    source.add_argument("--manifest")
    source.add_argument("--folder")
    a.add_argument("--tissue")
    a.add_argument("--slide-id")
    a.add_argument("--replace", action="store_true", help="re-point an already registered slide id")
    slsub.add_parser("list", help="list registered slides")
    sl.set_defaults(func=cmd_slides)

    m = sub.add_parser("materialize", help="run the slide pipeline for registered slides")
    m.add_argument("--slide", action="append", help="slide id (repeatable; default: all registered)")
    m.add_argument("--select", action="append", help="asset name (repeatable; default: all)")
    m.set_defaults(func=cmd_materialize)

    b = sub.add_parser("bench", help="benchmark each stage on the bench slide; JSON under $STHELAR_HOME/bench")
    b.add_argument("--size", choices=list(SIZES), default="bench")
    b.add_argument("--stage", action="append", choices=list(BENCH_STAGES), help="only these stages (repeatable)")
    b.add_argument("--seed", type=int, default=0)
    b.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of `sthelar`; an InputError becomes one line on stderr and exit code 2."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
