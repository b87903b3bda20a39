"""Schema of ``deployment.yaml``: compute classes per asset (Kubernetes resources, the GPU pool)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import PositiveInt, model_validator

from sthelar_platform.core.config._base import Section


class ComputeClass(Section):
    pool: str | None = None
    container_config: dict[str, Any] = {}
    pod_spec_config: dict[str, Any] = {}


class LocalExecutorConfig(Section):
    start_method: Literal["forkserver", "spawn"] = "forkserver"
    max_concurrent: PositiveInt = 2
    gpu_steps_at_once: PositiveInt = 1


class DeploymentConfig(Section):
    version: int
    local_executor: LocalExecutorConfig = LocalExecutorConfig()
    classes: dict[str, ComputeClass]
    assets: dict[str, str]
    # asset -> the bench stage (or ``stage.step``) whose peak RSS on the xl slide sized its class
    measured_by: dict[str, str] = {}

    @model_validator(mode="after")
    def _classes_exist(self) -> DeploymentConfig:
        unknown = {a: c for a, c in self.assets.items() if c not in self.classes}
        if unknown:
            raise ValueError(f"assets name unknown classes {unknown} (classes: {sorted(self.classes)})")
        stray = sorted(set(self.measured_by) - set(self.assets))
        if stray:
            raise ValueError(f"measured_by names assets without a class: {stray}")
        return self
