"""Dagster assets: thin orchestration over ``sthelar_platform``."""
