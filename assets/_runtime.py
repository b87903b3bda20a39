"""What every per-slide asset does around its one library call.

Validate the slide id, write into a temporary folder that replaces the output only on
success, hash the output (its data version), record lineage (success or failure), and
return rich metadata.
"""


import inspect
import json
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dagster import AssetExecutionContext, DataVersion, MaterializeResult, MetadataValue

from resources import LineageResource, StorageResource
from sthelar_platform.core.atomic import atomic_dir
from sthelar_platform.core.config import config_version, load_config
from sthelar_platform.core.hashing import sha256_text, sha256_tree
from sthelar_platform.core.ids import validate_slide_id
from sthelar_platform.core.lineage import utcnow
from sthelar_platform.core.thumbnails import png_data_uri


def compute_class(asset_name: str) -> dict[str, Any]:
    """``op_tags`` and ``pool`` for an asset from config/deployment.yaml (GPU, memory or default class).

    The tags are what the Kubernetes executor reads (``dagster-k8s/config``); locally they are inert.
    """
    cfg = load_config("deployment")
    name = cfg["assets"].get(asset_name, "default")
    cls = cfg["classes"][name]
    k8s = {k: cls[k] for k in ("container_config", "pod_spec_config") if k in cls}
    return {"op_tags": {"sthelar/compute": name, "dagster-k8s/config": k8s}, "pool": cls.get("pool")}


def code_version_of(*objects: Any, configs: tuple[str, ...] = ()) -> str:
    """Hash of the source of the library modules/functions an asset calls plus its config files."""
    parts = [inspect.getsource(o) for o in objects] + [config_version(c) for c in configs]
    return sha256_text("\n".join(parts))[:12]


def run_slide_stage(
    context: AssetExecutionContext,
    stage: str,
    storage: StorageResource,
    lineage: LineageResource,
    compute: Callable[[Path], dict[str, Any]],
    inputs: tuple[str, ...] = (),
    final: Path | None = None,
) -> MaterializeResult:
    """Run ``compute(tmp_dir) -> metadata`` for the current slide partition with atomic output and lineage.

    ``final`` defaults to ``warehouse/<stage>/<slide_id>``; exports and cohort assets (no
    partition) pass their own folder.
    """
    slide_id = validate_slide_id(context.partition_key) if context.has_partition_key else None
    if final is None:
        if slide_id is None:
            raise ValueError(f"{stage}: an unpartitioned (cohort) asset must name its output folder")
        final = storage.stage_dir(stage, slide_id)
    label = f"{stage}[{slide_id or 'all slides'}]"
    store = lineage.store()
    input_versions = {name: store.latest_data_version(name, slide_id) for name in inputs}
    started = utcnow()
    t0 = time.perf_counter()
    base = {"run_id": context.run_id, "asset_key": stage, "partition_key": slide_id,
            "code_version": context.assets_def.code_versions_by_key.get(context.asset_key) or "",
            "input_versions": json.dumps(input_versions), "output_uri": final.as_uri(), "started_at": started}
    try:
        with atomic_dir(final) as tmp:
            metadata = compute(tmp)
            data_version = sha256_tree(tmp)
    except BaseException as exc:
        store.record("materializations", {**base, "status": "failure", "finished_at": utcnow(),
                                          "error": f"{type(exc).__name__}: {exc}"[:4000]})
        context.log.error(f"{label} failed; earlier output (if any) kept at {final}\n{traceback.format_exc(limit=3)}")
        raise
    wall = time.perf_counter() - t0
    store.record("materializations", {**base, "status": "success", "finished_at": utcnow(), "data_version": data_version,
                                      "metadata": json.dumps(_plain(metadata), default=str)[:20000]})
    context.log.info(f"{label} written to {final} in {wall:.1f}s (data version {data_version[:12]})")
    meta = {k: _to_metadata(v) for k, v in metadata.items()}
    meta.update({"dagster/uri": MetadataValue.path(str(final)), "wall_s": round(wall, 3),
                 "input_versions": MetadataValue.json(input_versions)})
    return MaterializeResult(metadata=meta, data_version=DataVersion(data_version))


def md_image(path: Path, alt: str, px: int = 256) -> MetadataValue:
    """A PNG shown inline in the Dagster UI (a small data URI: it lives in the event log)."""
    return MetadataValue.md(f"![{alt}]({png_data_uri(path, max_px=px)})")


def _plain(metadata: dict[str, Any]) -> dict[str, Any]:
    """The JSON-able part of the metadata, for the lineage table (images stay in Dagster only)."""
    return {k: v for k, v in metadata.items() if isinstance(v, str | int | float | bool | list | dict | type(None))}


def _to_metadata(v: Any) -> Any:
    if isinstance(v, dict | list):
        return MetadataValue.json(v)
    if isinstance(v, Path):
        return MetadataValue.path(str(v))
    return v
