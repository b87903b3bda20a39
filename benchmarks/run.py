"""Benchmark every stage that exists on the `bench` SYNTHETIC slide (>= 100k cells, >= 20M transcripts).

Usage: python benchmarks/run.py [--size bench|demo|tiny] [--stage NAME ...]
JSON per stage in $STHELAR_HOME/bench/<size>/<stage>.json (wall_s, throughput + unit, peak_rss_mb, inputs) and
bench/<size>/summary.json; the assets run in the platform home bench/<size>/home/ (sthelar_cli/bench.py).
"""

import sys

from sthelar_cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
