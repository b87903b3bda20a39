"""The example Kubernetes deployment: the instance config validates against Dagster's schema, the run
launcher config against K8sRunLauncher's, and the same definitions select the k8s executor with each
asset's pod sized by its compute class (GPU for training; memory classes sized from the xl benchmark)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from dagster._config import process_config
from dagster._core.instance.config import dagster_instance_config
from dagster_k8s import K8sRunLauncher

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "k8s"


def test_instance_config_validates_with_postgres_and_the_k8s_run_launcher(monkeypatch):
    for var in ("DAGSTER_PG_HOST", "DAGSTER_PG_USER", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_DB"):
        monkeypatch.setenv(var, "x")
    config, _ = dagster_instance_config(str(DEPLOY))
    assert "postgres_db" in config["storage"]["postgres"]
    launcher = config["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_k8s", "K8sRunLauncher")
    checked = process_config(K8sRunLauncher.config_type(), launcher["config"])
    assert checked.success, checked.errors
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"


def test_helm_values_run_the_same_definitions_with_the_k8s_executor():
    values = yaml.safe_load((DEPLOY / "values.yaml").read_text())
    dep = values["dagster-user-deployments"]["deployments"][0]
    env = {e["name"]: e["value"] for e in dep["env"]}
    assert env["STHELAR_EXECUTOR"] == "k8s" and dep["dagsterApiGrpcArgs"][-1] == "sthelar_definitions.py"
    assert values["runLauncher"]["type"] == "K8sRunLauncher"


def test_definitions_select_the_k8s_executor_and_size_pods_per_asset(tmp_path):
    code = """
import json, sthelar_definitions as d
from dagster import AssetKey
job = d.defs.resolve_job_def("slide_pipeline")
def tags(k):
    a = d.defs.resolve_assets_def(AssetKey(k))
    return {"tags": {k: json.loads(v) if k == "dagster-k8s/config" else v for k, v in a.op.tags.items()}, "pool": a.op.pool}
print(json.dumps({"executor": job.executor_def.name, "training": tags("cellvit_detailed"),
                  "tiling": tags("patches_40x"), "ingest": tags("xenium_slide")}))
"""
    env = {**os.environ, "STHELAR_EXECUTOR": "k8s", "STHELAR_HOME": str(tmp_path / "home")}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info["executor"] == "k8s"
    gpu = info["training"]["tags"]["dagster-k8s/config"]["container_config"]["resources"]
    assert gpu["limits"]["nvidia.com/gpu"] == "1" and info["training"]["pool"] == "gpu"
    from sthelar_platform.core.config import load_config

    cfg = load_config("deployment")
    for asset, key in (("patches_40x", "tiling"), ("xenium_slide", "ingest")):
        cls = cfg.assets[asset]
        assert info[key]["tags"]["sthelar/compute"] == cls
        resources = info[key]["tags"]["dagster-k8s/config"]["container_config"]["resources"]
        assert resources == cfg.classes[cls].container_config["resources"]


def test_local_runs_fork_their_steps_from_a_server_warmed_with_their_library_code():
    import sthelar_definitions
    from assets.executors import library_modules

    job = sthelar_definitions.defs.resolve_job_def("slide_pipeline")
    executor = job.executor_def
    assert executor.name == "sthelar_local"
    start = executor.apply_config_mapping({}).value["config"]["start_method"]["forkserver"]
    assert start["preload_modules"][0] == "sthelar_definitions"
    assert {"sthelar_platform.annotation.tangram", "sthelar_platform.ingest.xenium"} <= set(start["preload_modules"])
    qc_executor = sthelar_definitions.defs.resolve_job_def("qc_job").executor_def
    qc = qc_executor.apply_config_mapping({}).value["config"]["start_method"]["forkserver"]
    assert qc["preload_modules"] == ["sthelar_definitions", *library_modules(sthelar_definitions.QC_ASSETS)]
    assert "sthelar_platform.annotation.tangram" not in qc["preload_modules"]  # a QC refresh never imports scanpy


def _bytes(quantity: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return float(quantity[: -len(suffix)]) * factor
    return float(quantity)


def _xl_peak_mib(xl: dict, stage: str) -> float:
    name, _, step = stage.partition(".")
    entry = xl["stages"][name]
    return entry["inputs"]["step_peak_rss_mb"][step] if step else entry["peak_rss_mb"]


def test_every_asset_has_a_class_and_memory_requests_cover_the_xl_peaks():
    """Each executable asset carries its class; a measured asset requests >= 1.5x its xl peak RSS."""
    from dagster import AssetsDefinition

    import sthelar_definitions
    from sthelar_platform.core.config import load_config

    cfg = load_config("deployment")
    xl = json.loads((ROOT / "benchmarks" / "results" / "xl.json").read_text())
    assert xl["slide"]["n_cells"] >= 500_000 and xl["slide"]["n_genes"] >= 5000 and xl["slide"]["n_transcripts"] >= 1e8
    seen = set()
    for a in sthelar_definitions.defs.assets:
        if not isinstance(a, AssetsDefinition) or not a.is_executable:
            continue
        name = a.node_def.name
        seen.add(name)
        assert a.op.tags.get("sthelar/compute") == cfg.assets[name], name
        if a.partitions_def is not None and cfg.assets[name] != "gpu":  # a per-slide stage is sized by measurement
            assert name in cfg.measured_by, f"{name}: no xl measurement sizes its class"
    assert set(cfg.assets) == seen, f"classes for assets that do not exist: {set(cfg.assets) - seen}"
    for asset, stage in cfg.measured_by.items():
        resources = cfg.classes[cfg.assets[asset]].container_config["resources"]
        request, limit = _bytes(resources["requests"]["memory"]), _bytes(resources["limits"]["memory"])
        peak = _xl_peak_mib(xl, stage) * 2**20
        assert request >= 1.5 * peak, f"{asset}: requests {request / 2**30:.1f} GiB < 1.5 x {peak / 2**30:.2f} GiB ({stage})"
        assert limit >= request
