"""What every stand-alone benchmark script does at its end: its peak RSS, and its JSON printed and saved."""

from __future__ import annotations

import json
import resource
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sthelar_platform.core.paths import StorageLayout
    from sthelar_platform.ingest.manifest import SlideSpec


def peak_rss_mb() -> float:
    """Peak resident set size of the running process so far, in MiB."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def emit(report: dict, out: Path | None) -> int:
    """Print the report as JSON and, with ``out``, write it there too; the script's exit code."""
    text = json.dumps(report, indent=2)
    print(text)
    if out:
        out.write_text(text + "\n")
    return 0


def bench_slide(home: Path, size: str) -> tuple[StorageLayout, SlideSpec]:
    """The platform home ``sthelar bench --size SIZE`` ran its assets in, and its (first) slide."""
    from sthelar_platform.core.paths import StorageLayout
    from sthelar_platform.ingest.manifest import SlideCatalog

    layout = StorageLayout.at(home / "bench" / size / "home")
    if not layout.catalog.exists():
        raise SystemExit(f"no benchmark of size {size} under {home}: run `sthelar --home {home} bench --size {size}`")
    return layout, SlideCatalog(layout.catalog).list()[0]
