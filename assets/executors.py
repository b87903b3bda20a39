"""How runs execute their steps: locally (Dagster's multiprocess executor, steps forked from a warm server) or
one Kubernetes job per step (``STHELAR_EXECUTOR=k8s``, deploy/k8s).

Every step keeps a process of its own (a crashed, killed or out-of-memory step takes nothing else with it).
Locally those processes fork from a forkserver that imported the run's library code once: the entry modules
of the run's assets, the same ones their code versions name (``assets/_runtime.code_version_of``). A run of
the slide pipeline imports torch, scanpy and spatialdata once instead of once per step.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from dagster import AssetsDefinition, ExecutorDefinition, SourceAsset, multiprocess_executor

from assets._runtime import CODE_VERSION_INPUTS
from sthelar_platform.core.config import load_config

GPU_TAG = {"key": "sthelar/compute", "value": "gpu"}


def library_modules(assets: Iterable[AssetsDefinition | SourceAsset]) -> list[str]:
    """The library modules a set of assets calls into (their code versions' entry modules)."""
    modules: set[str] = set()
    for a in assets:
        for version in getattr(a, "code_versions_by_key", {}).values():
            modules.update(CODE_VERSION_INPUTS.get(version or "", ((), ()))[0])
    return sorted(modules)


def local_executor(assets: Iterable[AssetsDefinition | SourceAsset]) -> ExecutorDefinition:
    """The multiprocess executor of deployment.yaml ``local_executor``, its forkserver warmed for ``assets``."""
    cfg = load_config("deployment").local_executor
    config: dict = {"max_concurrent": cfg.max_concurrent,
                    # GPU-class steps (training, evaluation, predictions): on a CPU each uses every core,
                    # on one GPU they would share it
                    "tag_concurrency_limits": [{**GPU_TAG, "limit": cfg.gpu_steps_at_once}]}
    if cfg.start_method == "forkserver":
        config["start_method"] = {"forkserver": {"preload_modules": ["sthelar_definitions", *library_modules(assets)]}}
    else:
        config["start_method"] = {"spawn": {}}
    return multiprocess_executor.configured(config, name="sthelar_local")


def build_executor(assets: Iterable[AssetsDefinition | SourceAsset]) -> ExecutorDefinition:
    """Local runs: ``local_executor``. ``STHELAR_EXECUTOR=k8s``: one Kubernetes job per step (deploy/k8s), each
    asset's pod sized by its ``dagster-k8s/config`` tags (deployment.yaml).
    """
    kind = os.environ.get("STHELAR_EXECUTOR", "multiprocess")
    if kind == "multiprocess":
        return local_executor(assets)
    if kind == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor.configured({
            "job_namespace": os.environ.get("STHELAR_K8S_NAMESPACE", "sthelar"),
            "max_concurrent": int(os.environ.get("STHELAR_K8S_MAX_CONCURRENT", "32")),
            # at most this many GPU steps of one run at once (the `gpu` pool limits it across runs)
            "tag_concurrency_limits": [{**GPU_TAG, "limit": 1}],
            "env_vars": ["STHELAR_HOME", "STHELAR_DEVICE", "STHELAR_CONFIG_DIR", "STHELAR_LINEAGE_URL",
                         "DBT_SEND_ANONYMOUS_USAGE_STATS"],
        })
    raise ValueError(f"STHELAR_EXECUTOR={kind!r}: use multiprocess (default) or k8s")
