"""Reading the versioned config files: the packaged YAML, or a lab's override folder, validated on load.

``STHELAR_CONFIG_DIR`` points at a folder whose files replace the packaged ones of the same name, so a
lab changes thresholds or mappings without editing code. An unknown key, a missing key or a value of the
wrong type is a :class:`ConfigError` naming the file and the dotted key. Only the edge (assets, the CLI,
benchmarks) calls these loaders; library functions take the section they use as an argument.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Literal, overload

import yaml
from pydantic import ValidationError

from sthelar_platform.core.categories import CategorySystem
from sthelar_platform.core.config._base import Section
from sthelar_platform.core.config.annotation import AnnotationConfig
from sthelar_platform.core.config.categories import CategoriesConfig
from sthelar_platform.core.config.deployment import DeploymentConfig
from sthelar_platform.core.config.pipeline import PipelineConfig
from sthelar_platform.core.config.synthetic import SyntheticConfig
from sthelar_platform.core.config.tiling import TilingConfig
from sthelar_platform.core.config.training import TrainingConfig
from sthelar_platform.core.errors import ConfigError
from sthelar_platform.core.hashing import sha256_text

PACKAGED_CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"
ConfigName = Literal["pipeline", "annotation", "categories", "tiling", "training", "deployment", "synthetic"]
MODELS: dict[str, type[Section]] = {
    "pipeline": PipelineConfig, "annotation": AnnotationConfig, "categories": CategoriesConfig,
    "tiling": TilingConfig, "training": TrainingConfig, "deployment": DeploymentConfig,
    "synthetic": SyntheticConfig,
}
CONFIG_NAMES: tuple[str, ...] = tuple(MODELS)


def config_dir() -> Path:
    """The active override folder, or the packaged one."""
    override = os.environ.get("STHELAR_CONFIG_DIR")
    return Path(override) if override else PACKAGED_CONFIG_DIR


def config_path(name: str) -> Path:
    """The file a config name resolves to: the override folder's, else the packaged one."""
    if name not in MODELS:
        raise KeyError(f"unknown config {name!r}; known: {', '.join(MODELS)}")
    candidate = config_dir() / f"{name}.yaml"
    return candidate if candidate.exists() else PACKAGED_CONFIG_DIR / f"{name}.yaml"


def _first_error(exc: ValidationError) -> tuple[str, str]:
    """The dotted key of the first problem, and every problem (up to five) in words."""
    parts, keys = [], []
    for err in exc.errors()[:5]:
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        kind = {"extra_forbidden": "unknown key", "missing": "missing key"}.get(err["type"], err["msg"])
        keys.append(key)
        parts.append(f"`{key}`: {kind}")
    more = f" (and {len(exc.errors()) - 5} more)" if len(exc.errors()) > 5 else ""
    return keys[0], "; ".join(parts) + more


@functools.cache
def _load(name: str, path: str, mtime: float) -> Section:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(path, None, f"not valid YAML ({exc})", "fix the YAML syntax or restore the packaged file") from exc
    if not isinstance(data, dict):
        raise ConfigError(path, None, "config must be a mapping at the top level", "restore the packaged file's layout")
    try:
        return MODELS[name].model_validate(data)
    except ValidationError as exc:
        key, described = _first_error(exc)
        raise ConfigError(path, key, f"invalid config: {described}",
                          f"compare with the packaged {name}.yaml and fix or remove those keys") from None


@overload
def load_config(name: Literal["pipeline"]) -> PipelineConfig: ...
@overload
def load_config(name: Literal["annotation"]) -> AnnotationConfig: ...
@overload
def load_config(name: Literal["categories"]) -> CategoriesConfig: ...
@overload
def load_config(name: Literal["tiling"]) -> TilingConfig: ...
@overload
def load_config(name: Literal["training"]) -> TrainingConfig: ...
@overload
def load_config(name: Literal["deployment"]) -> DeploymentConfig: ...
@overload
def load_config(name: Literal["synthetic"]) -> SyntheticConfig: ...
@overload
def load_config(name: str) -> Section: ...
def load_config(name: str) -> Section:
    """The named config file as its validated model (cached until the file changes)."""
    path = config_path(name)
    if not path.exists():
        raise ConfigError(path, None, "config file not found", f"create {path.name} or unset STHELAR_CONFIG_DIR")
    return _load(name, str(path), path.stat().st_mtime)


def config_version(name: str) -> str:
    """Hash of a config file's validated values, or of one section of it (``"pipeline.he_image"``): part of the
    code version of the assets that read it. Comments and layout do not count; a value, or a schema default,
    that changes does.
    """
    file, _, dotted = name.partition(".")
    section: Section = load_config(file)
    for key in filter(None, dotted.split(".")):
        if key not in type(section).model_fields:
            raise KeyError(f"{file}.yaml has no section {dotted!r}")
        section = getattr(section, key)
    return sha256_text(json.dumps(section.model_dump(mode="json"), sort_keys=True))[:12]  # mapping order is no change


def overrides_dir() -> Path:
    """Where reviewed per-slide override files live (``overrides/`` of the active config folder)."""
    return config_dir() / "overrides"


def load_synthetic() -> SyntheticConfig:
    """The synthetic world's config (the generator's tissues, sizes and expression)."""
    return load_config("synthetic")


def load_categories() -> CategorySystem:
    """The harmonized categories of the active config (what a caller passes as ``categories=``)."""
    return load_config("categories").system()
