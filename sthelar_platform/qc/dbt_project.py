"""The dbt QC project's plumbing: its manifest, the database it reads and the one it builds.

dbt reads a consistent snapshot of the lineage database (never the live file, which writers
lock) and builds into a fresh temporary database that replaces ``qc/qc.duckdb`` only when the
build has finished. Two builds at once each work on their own files; readers see the old or
the new database, never a half-built one.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from sthelar_platform.core.hashing import sha256_text
from sthelar_platform.core.lineage import LineageStore
from sthelar_platform.core.paths import StorageLayout

DBT_PROJECT_DIR = Path(__file__).resolve().parents[2] / "dbt_qc"
_SOURCE_SUFFIXES = {".sql", ".yml", ".yaml", ".md", ".csv"}


def project_fingerprint(project_dir: Path = DBT_PROJECT_DIR) -> str:
    """Hash of every file dbt parses (models, macros, tests, project and profile)."""
    parts = []
    for p in sorted(project_dir.rglob("*")):
        rel = p.relative_to(project_dir)
        if p.is_file() and p.suffix in _SOURCE_SUFFIXES and rel.parts[0] not in ("target", "logs", "dbt_packages"):
            parts.append(f"{rel}\n{p.read_text()}")
    return sha256_text("\n".join(parts))[:16]


def ensure_manifest(project_dir: Path = DBT_PROJECT_DIR) -> Path:
    """``target/manifest.json``, parsed again (offline, no database) when the project changed.

    Parsing happens under a file lock into a private folder and the manifest is renamed into
    place, so processes loading the code location at once never read half a manifest.
    """
    target = project_dir / "target"
    manifest, stamp = target / "manifest.json", target / "manifest.fingerprint"
    fingerprint = project_fingerprint(project_dir)
    if manifest.exists() and stamp.exists() and stamp.read_text() == fingerprint:
        return manifest
    target.mkdir(parents=True, exist_ok=True)
    with open(target / ".parse.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if manifest.exists() and stamp.exists() and stamp.read_text() == fingerprint:
            return manifest
        from dbt.cli.main import dbtRunner

        os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "False")
        tmp = target / f"parse-{uuid.uuid4().hex[:8]}"
        try:
            res = dbtRunner().invoke(["parse", "--project-dir", str(project_dir), "--profiles-dir", str(project_dir),
                                      "--target-path", str(tmp), "--log-path", str(tmp), "--quiet"])
            if not res.success or not (tmp / "manifest.json").exists():
                raise RuntimeError(f"dbt parse of {project_dir} failed: {res.exception}")
            (tmp / "manifest.json").replace(manifest)
            stamp.write_text(fingerprint)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return manifest


@dataclass(frozen=True)
class QcBuild:
    """The files of one dbt build: the lineage snapshot it reads and the database it writes."""

    snapshot: Path
    database: Path
    final: Path

    @property
    def env(self) -> dict[str, str]:
        return {"STHELAR_LINEAGE_SNAPSHOT": str(self.snapshot), "STHELAR_QC_DB": str(self.database)}


def qc_database(layout: StorageLayout) -> Path:
    """The qc.duckdb dbt builds (swapped in atomically)."""
    return layout.qc / "qc.duckdb"


def run_results_path(layout: StorageLayout) -> Path:
    """Where the last dbt build's run_results.json is kept."""
    return layout.qc / "dbt_run_results.json"


def start_build(layout: StorageLayout, lineage: LineageStore) -> QcBuild:
    """Snapshot the lineage tables (DuckDB file, whatever the backend) and name the qc.duckdb a dbt build writes."""
    token = uuid.uuid4().hex[:8]
    qc = layout.qc
    qc.mkdir(parents=True, exist_ok=True)
    snapshot = lineage.snapshot(qc / f"lineage_snapshot.tmp-{token}.duckdb")
    return QcBuild(snapshot=snapshot, database=qc / f"qc.duckdb.tmp-{token}", final=qc_database(layout))


def finish_build(build: QcBuild, run_results: Path | None, published: bool) -> None:
    """Publish the built database (and dbt's results) when the models built; always clean up."""
    try:
        if published:
            build.database.replace(build.final)
            if run_results is not None and run_results.exists():
                dest = build.final.parent / "dbt_run_results.json"  # = run_results_path(layout)
                tmp = dest.with_name(f"{dest.name}.tmp-{uuid.uuid4().hex[:8]}")
                shutil.copyfile(run_results, tmp)
                tmp.replace(dest)
    finally:
        for p in (build.snapshot, build.database, Path(f"{build.database}.wal")):
            p.unlink(missing_ok=True)


def summarize_run_results(path: Path) -> dict:
    """Counts by status and the failing nodes of a dbt ``run_results.json`` (tests and models)."""
    data = json.loads(path.read_text())
    nodes = []
    for r in data.get("results", []):
        uid = r.get("unique_id", "")
        parts = uid.split(".")  # model.<project>.<name> / test.<project>.<name>.<hash>
        nodes.append({"unique_id": uid, "kind": parts[0], "name": parts[2] if len(parts) > 2 else uid,
                      "status": r.get("status"), "failures": r.get("failures"), "message": r.get("message")})
    counts: dict[str, int] = {}
    for n in nodes:
        counts[f"{n['kind']}_{n['status']}"] = counts.get(f"{n['kind']}_{n['status']}", 0) + 1
    bad = [n for n in nodes if n["status"] in ("fail", "error", "warn")]
    return {"generated_at": data.get("metadata", {}).get("generated_at"), "counts": counts, "problems": bad,
            "n_tests": sum(n["kind"] == "test" for n in nodes), "n_models": sum(n["kind"] == "model" for n in nodes)}
