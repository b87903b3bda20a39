"""The dbt CLI resource over dbt_qc/, with the dbt executable of this environment."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from dagster_dbt import DbtCliResource, DbtProject

from sthelar_platform.qc.dbt_project import DBT_PROJECT_DIR, ensure_manifest

# The manifest is (re)parsed offline when the dbt project changed: loading the code location
# never needs a manual `dbt parse`.
ensure_manifest(DBT_PROJECT_DIR)
qc_dbt_project = DbtProject(project_dir=DBT_PROJECT_DIR, profiles_dir=DBT_PROJECT_DIR)


def dbt_executable() -> str:
    """The dbt installed beside this Python (the project's venv), even when the venv is not on PATH."""
    beside = Path(sys.executable).parent / "dbt"
    return str(beside) if beside.exists() else (shutil.which("dbt") or "dbt")


def dbt_resource() -> DbtCliResource:
    """The dbt CLI resource over dbt_qc/ (its manifest is parsed offline when the project changes)."""
    return DbtCliResource(project_dir=qc_dbt_project, profiles_dir=str(DBT_PROJECT_DIR), dbt_executable=dbt_executable())
