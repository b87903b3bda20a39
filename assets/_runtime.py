"""What every per-slide asset does around its one library call.

Validate the slide id, write into a temporary folder that replaces the output only on
success, hash the output (its data version), record lineage (success or failure), and
return rich metadata.
"""


import json
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Generic, TypedDict, TypeVar

from dagster import AssetCheckResult, AssetExecutionContext, DataVersion, MaterializeResult, MetadataValue

from resources import LineageResource, StorageResource
from sthelar_platform.core.atomic import atomic_dir, recover_interrupted_swap
from sthelar_platform.core.code_version import code_version
from sthelar_platform.core.config import config_path, config_version, load_config
from sthelar_platform.core.errors import ConfigError, InputError, out_of_space
from sthelar_platform.core.hashing import VERSION_MARKER, sha256_tree
from sthelar_platform.core.ids import validate_slide_id
from sthelar_platform.core.lineage import LineageStore, utcnow
from sthelar_platform.core.thumbnails import png_data_uri

T = TypeVar("T")


class ComputeClassArgs(TypedDict):
    op_tags: dict[str, Any]
    pool: str | None


def compute_class(asset_name: str) -> ComputeClassArgs:
    """``op_tags`` and ``pool`` for an asset from sthelar_platform/config/deployment.yaml; an asset without a class is refused.

    The tags are what the Kubernetes executor reads (``dagster-k8s/config``); locally they are inert.
    """
    cfg = load_config("deployment")
    name = cfg.assets.get(asset_name)
    if name is None:
        raise ConfigError(config_path("deployment"), f"assets.{asset_name}", "this asset has no compute class",
                          "add it under `assets:` in sthelar_platform/config/deployment.yaml "
                          "(sized from benchmarks/results/xl.json)")
    cls = cfg.classes[name]
    k8s = {"container_config": cls.container_config, "pod_spec_config": cls.pod_spec_config}
    return {"op_tags": {"sthelar/compute": name, "dagster-k8s/config": {k: v for k, v in k8s.items() if v}},
            "pool": cls.pool}


# code version -> (library entry modules, config names): what each version was computed from, so a test
# can recompute every asset's version over an edited copy of the library
CODE_VERSION_INPUTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}


def code_version_of(*entries: str | ModuleType | Callable[..., Any], configs: tuple[str, ...] = ()) -> str:
    """An asset's code version: the library modules its entry points reach through their imports, and its
    config files or sections (``sthelar_platform.core.code_version``). Name the library modules it calls
    (``"sthelar_platform.tiling.patches"``): the asset imports them in its body, so that loading the
    definitions does not import torch, scanpy or spatialdata.
    """
    modules = tuple(sorted({e if isinstance(e, str) else e.__name__ if isinstance(e, ModuleType) else e.__module__
                            for e in entries}))
    version = code_version(modules, [config_version(c) for c in configs])
    CODE_VERSION_INPUTS[version] = (modules, configs)
    return version


@dataclass(frozen=True)
class StageOutput(Generic[T]):
    """What a stage's compute returns: the materialization's metadata and the library's typed result."""

    metadata: dict[str, Any]
    value: T


@dataclass(frozen=True)
class StageRun(Generic[T]):
    """A published stage output: where it is, its data version, and the typed result of the library call."""

    value: T
    output: Path
    data_version: str
    metadata: dict[str, Any] = field(repr=False)

    def result(self, checks: Sequence[AssetCheckResult] = ()) -> MaterializeResult:
        """The materialization, with the checks that ran in the asset's step on what it just wrote."""
        return MaterializeResult(metadata=self.metadata, data_version=DataVersion(self.data_version),
                                 check_results=list(checks))


def _input_folder(store: LineageStore, storage: StorageResource, name: str, slide_id: str | None) -> Path | None:
    """Where input ``name`` of this run lives: the slide's stage folder, else its latest recorded output."""
    if slide_id is not None:
        folder = storage.stage_dir(name, slide_id)
        recover_interrupted_swap(folder)  # a killed upstream swap is finished before it is read
        if folder.exists():
            return folder
    for key in dict.fromkeys((slide_id, None)):
        rows = store.query("SELECT output_uri FROM materializations WHERE asset_key = ? AND partition_key IS NOT "
                           "DISTINCT FROM ? AND status = 'success' ORDER BY finished_at DESC LIMIT 1", [name, key])
        if rows and rows[0]["output_uri"]:
            return Path(rows[0]["output_uri"].removeprefix("file://"))
    return None


def _read_input_versions(store: LineageStore, folders: dict[str, Path | None], slide_id: str | None) -> dict[str, Any]:
    """The data version each input folder holds now (its marker); lineage's latest only for pre-marker outputs."""
    versions = {}
    for name, folder in folders.items():
        marker = folder / VERSION_MARKER if folder is not None else None
        if marker is not None and marker.is_file():
            versions[name] = json.loads(marker.read_text())["data_version"]
        else:
            versions[name] = store.latest_data_version(name, slide_id)
    return versions


def run_slide_stage(
    context: AssetExecutionContext,
    stage: str,
    storage: StorageResource,
    lineage: LineageResource,
    compute: Callable[[Path], StageOutput[T]],
    inputs: tuple[str, ...] = (),
    final: Path | None = None,
) -> StageRun[T]:
    """Run ``compute(tmp_dir)`` for the current slide partition with atomic output and lineage.

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
    input_folders = {name: _input_folder(store, storage, name, slide_id) for name in inputs}
    input_versions = _read_input_versions(store, input_folders, slide_id)
    started = utcnow()
    t0 = time.perf_counter()
    base = {"run_id": context.run_id, "asset_key": stage, "partition_key": slide_id,
            "code_version": context.assets_def.code_versions_by_key.get(context.asset_key) or "",
            "input_versions": json.dumps(input_versions), "output_uri": final.as_uri(), "started_at": started}
    try:
        with atomic_dir(final, stale_after_s=load_config("pipeline").outputs.stale_tmp_max_age_s) as tmp:
            produced = compute(tmp)
            metadata = produced.metadata
            _check_inputs_unchanged(store, input_folders, input_versions, slide_id, label)
            data_version = sha256_tree(tmp)
            (tmp / VERSION_MARKER).write_text(json.dumps(
                {"asset_key": stage, "partition_key": slide_id, "data_version": data_version, "run_id": context.run_id,
                 "input_versions": input_versions, "written_at": utcnow()}, indent=1))
    except BaseException as exc:
        full = out_of_space(exc, final)  # a full disk is named as such, not as the writer's own error
        error = full or exc
        try:
            store.record("materializations", {**base, "status": "failure", "finished_at": utcnow(),
                                              "error": f"{type(error).__name__}: {error}"[:4000]})
        except OSError as lost:  # the same full disk may refuse the record: never hide the step's own error
            context.log.warning(f"{label}: the failure could not be recorded in lineage ({lost})")
        context.log.error(f"{label} failed; earlier output (if any) kept at {final}\n{traceback.format_exc(limit=3)}")
        if full is not None:
            raise full from exc
        raise
    wall = time.perf_counter() - t0
    store.record("materializations", {**base, "status": "success", "finished_at": utcnow(), "data_version": data_version,
                                      "metadata": json.dumps(_plain(metadata), default=str)[:20000]})
    context.log.info(f"{label} written to {final} in {wall:.1f}s (data version {data_version[:12]})")
    meta = {k: _to_metadata(v) for k, v in metadata.items()}
    meta.update({"dagster/uri": MetadataValue.path(str(final)), "wall_s": round(wall, 3),
                 "input_versions": MetadataValue.json(input_versions)})
    return StageRun(value=produced.value, output=final, data_version=data_version, metadata=meta)


def _check_inputs_unchanged(store: LineageStore, folders: dict[str, Path | None], read: dict[str, Any],
                            slide_id: str | None, label: str) -> None:
    """Refuse to publish an output whose inputs were rewritten while it was computed (it may mix both)."""
    now = _read_input_versions(store, folders, slide_id)
    for name, version in read.items():
        if now[name] != version:
            raise InputError(folders[name] or name, f"input {name} was rewritten while {label} ran (version "
                             f"{str(version)[:12]} -> {str(now[name])[:12]}); this output was discarded",
                             "re-run this asset: it will read the new input")


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
