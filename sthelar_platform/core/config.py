"""Versioned configuration files shipped with the package (overridable per deployment).

``STHELAR_CONFIG_DIR`` points at a folder whose YAML files replace the packaged ones of
the same name, so a lab changes thresholds or mappings without editing code.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import yaml

from sthelar_platform.core.errors import InputError
from sthelar_platform.core.hashing import sha256_file

PACKAGED_CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"


def config_path(name: str) -> Path:
    override = os.environ.get("STHELAR_CONFIG_DIR")
    if override and (Path(override) / f"{name}.yaml").exists():
        return Path(override) / f"{name}.yaml"
    return PACKAGED_CONFIG_DIR / f"{name}.yaml"


@functools.lru_cache(maxsize=None)
def _load(path: str, mtime: float) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        raise InputError(path, f"not valid YAML ({exc})", "fix the YAML syntax or restore the packaged file") from exc
    if not isinstance(data, dict):
        raise InputError(path, "config must be a mapping at the top level", "restore the packaged file's layout")
    return data


def load_config(name: str) -> dict[str, Any]:
    """The named config as a dict (cached until the file changes)."""
    path = config_path(name)
    if not path.exists():
        raise InputError(path, "config file not found", f"create {path.name} or unset STHELAR_CONFIG_DIR")
    return _load(str(path), path.stat().st_mtime)


def config_version(name: str) -> str:
    """Content hash of a config file: part of the code version of the assets that read it."""
    return sha256_file(config_path(name))[:12]


def overrides_dir() -> Path:
    """Where reviewed per-slide override files live (``overrides/`` of the active config folder)."""
    override = os.environ.get("STHELAR_CONFIG_DIR")
    return Path(override) / "overrides" if override else PACKAGED_CONFIG_DIR / "overrides"
