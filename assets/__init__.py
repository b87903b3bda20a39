"""Thin Dagster orchestration over the sthelar_platform library: one module per pipeline stage."""

import warnings

# Per-partition asset checks (partitions_def on @asset_check) are what the platform needs and work in
# dagster 1.13; the API is marked preview. Silence that one notice, not warnings in general.
warnings.filterwarnings("ignore", message="Specifying a partitions_def on an AssetCheckSpec")
