"""Ingest time and peak RSS per Xenium generation and quirk, on the tiny SYNTHETIC slide.

Usage: python benchmarks/xenium_generations.py [--out FILE.json]

Each flavour is generated with `synthesize_slide(..., xoa=, quirks=)` and ingested in a fresh
process under /usr/bin/time (peak RSS of that process alone). Prints a Markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CASES = [(None, ()), ("1.9", ()), ("2.0", ()), ("3.1", ()), ("4.0", ()), ("ranger", ()), (None, ("rnd",)),
         ("3.1", ("foreign_ids",)), ("1.9", ("rnd", "bytes", "blank", "macos"))]
CHILD = r"""
import json, sys, time
from pathlib import Path
from sthelar_platform.core.config import load_config
from sthelar_platform.ingest.xenium import ingest_xenium
bundle, out = Path(sys.argv[1]), Path(sys.argv[2])
out.mkdir(parents=True)
t0 = time.perf_counter()
s = ingest_xenium(bundle, out, load_config("pipeline").ingest)
print(json.dumps({"ingest_s": round(time.perf_counter() - t0, 2), "reader": s.reader, "generation": s.generation,
                  "n_cells": s.n_cells, "n_transcripts": s.n_transcripts}))
"""


def main(argv: list[str] | None = None) -> int:
    """Generate and ingest each flavour; report time and peak RSS."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    from sthelar_platform.core.config import load_categories, load_synthetic
    from sthelar_platform.synth import synthesize_slide

    root = Path(tempfile.mkdtemp(prefix="xenium_generations_"))
    rows = []
    try:
        for xoa, quirks in CASES:
            name = f"{xoa or 'canonical'}{'+' + '+'.join(quirks) if quirks else ''}"
            folder = name.replace("+", "_")
            slide = synthesize_slide(root / folder, "tiny", "breast", "tiny", 0, load_synthetic(), load_categories(),
                                     xoa=xoa, quirks=quirks)
            run = subprocess.run(["/usr/bin/time", "-f", "MAXRSS %M", sys.executable, "-c", CHILD,
                                  str(slide.xenium_dir), str(root / f"{folder}_out")], capture_output=True, text=True)
            if run.returncode:
                raise RuntimeError(f"{name}: {run.stderr[-2000:]}")
            row = {"flavour": name, **json.loads(run.stdout.strip().splitlines()[-1]),
                   "peak_rss_mb": round(int(run.stderr.split("MAXRSS ")[-1].split()[0]) / 1024)}
            rows.append(row)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print("| flavour | generation detected | reader path | ingest s | peak RSS MB |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['flavour']} | {r['generation']} | {r['reader']} | {r['ingest_s']} | {r['peak_rss_mb']} |")
    report = {"benchmark": "xenium_generations", "slide": "tiny (SYNTHETIC)", "results": rows}
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
