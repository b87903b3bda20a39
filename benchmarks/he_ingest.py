"""H&E ingest at whole-slide size: a generated single-level (or 4x-step) RGB TIFF turned into the platform's pyramid.

Usage: python benchmarks/he_ingest.py [--width 80000] [--height 60000] [--layout single|svs4x] [--out FILE.json]

The source is written tile by tile (never held whole) from a few real-looking H&E tiles cut from
the tiny SYNTHETIC slide, shifted per tile so no two neighbours repeat. Ingest then runs in a fresh
process under /usr/bin/time, so the peak RSS is that of the conversion alone. Throughput is the
source's raw RGB megabytes per second of ingest.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
TILE = 512
MPP = 0.2738
CHILD = r"""
import json, sys, time
from pathlib import Path
from sthelar_platform.core.config import load_config
from sthelar_platform.ingest.he_image import ingest_he
src, out = Path(sys.argv[1]), Path(sys.argv[2])
out.mkdir(parents=True)
t0 = time.perf_counter()
s = ingest_he(src, out, load_config("pipeline").he_image.magnification_um_per_px,
              progress=lambda m: print(f"{time.perf_counter() - t0:8.1f} s  {m}", file=sys.stderr, flush=True))
print(json.dumps({"ingest_s": round(time.perf_counter() - t0, 1), "stored_as": s.stored_as, "levels": s.n_levels,
                  "output_bytes": (out / "he_image.ome.tif").stat().st_size}))
"""


def _patterns() -> list[np.ndarray]:
    from sthelar_platform.core.config import load_categories, load_synthetic
    from sthelar_platform.core.wsi import WholeSlide
    from sthelar_platform.synth import synthesize_slide

    with tempfile.TemporaryDirectory() as tmp:
        spec = synthesize_slide(Path(tmp), "pattern", "breast", "tiny", 0, load_synthetic(), load_categories())
        with WholeSlide(spec.he_image) as he:
            h, w = he.height, he.width
            return [he.read_region(0, y, x, TILE, TILE) for y in range(0, h - TILE, TILE // 2)
                    for x in range(0, w - TILE, TILE // 2)]


def write_source(path: Path, width: int, height: int, layout: str) -> None:
    """A tiled RGB TIFF of the given size, written tile by tile; ``svs4x`` adds 4x-step levels."""
    patterns = _patterns()

    def tiles(h: int, w: int, seed: int):
        rng = np.random.default_rng(seed)
        for _ in range(-(-h // TILE) * -(-w // TILE)):
            yield np.roll(patterns[rng.integers(len(patterns))], rng.integers(TILE), axis=1)

    res = {"resolution": (1e4 / MPP, 1e4 / MPP), "resolutionunit": "CENTIMETER"}
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        levels = [(height, width)]
        if layout == "svs4x":
            while max(levels[-1]) // 4 >= 1024:
                levels.append((levels[-1][0] // 4, levels[-1][1] // 4))
        for k, (h, w) in enumerate(levels):
            tw.write(tiles(h, w, k), shape=(h, w, 3), dtype=np.uint8, tile=(TILE, TILE), photometric="rgb",
                     compression="zlib", compressionargs={"level": 1}, metadata=None, maxworkers=2, **res)


def main(argv: list[str] | None = None) -> int:
    """Generate the source, ingest it in a measured child process, report MB/s and peak RSS."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=80_000)
    p.add_argument("--height", type=int, default=60_000)
    p.add_argument("--layout", choices=("single", "svs4x"), default="single")
    p.add_argument("--workdir", type=Path, default=None, help="where the source and output go (needs ~2x the source)")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="he_ingest_") as tmp:
        src, out = Path(tmp) / "source.tif", Path(tmp) / "out"
        t0 = time.perf_counter()
        write_source(src, args.width, args.height, args.layout)
        generate_s = time.perf_counter() - t0
        run = subprocess.run(["/usr/bin/time", "-f", "MAXRSS %M", sys.executable, "-c", CHILD, str(src), str(out)],
                             capture_output=True, text=True)
        if run.returncode:
            raise RuntimeError(run.stderr[-3000:])
        row = json.loads(run.stdout.strip().splitlines()[-1])
        peak_mb = int(run.stderr.split("MAXRSS ")[-1].split()[0]) / 1024
        raw_mb = args.width * args.height * 3 / 1e6
        report = {"benchmark": "he_ingest", "width": args.width, "height": args.height, "layout": args.layout,
                  "source_bytes": src.stat().st_size, "raw_rgb_mb": round(raw_mb), "generate_s": round(generate_s, 1),
                  **row, "mb_per_s": round(raw_mb / row["ingest_s"], 1), "peak_rss_mb": round(peak_mb),
                  "progress": [ln.strip() for ln in run.stderr.splitlines() if " s  " in ln]}
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
