"""The lineage / QC tables: one schema for every backend (DuckDB types; Postgres maps them)."""

from __future__ import annotations

# table -> ordered (column, DuckDB type). event_id is the idempotency key of every row.
SCHEMA: dict[str, list[tuple[str, str]]] = {
    "materializations": [
        ("event_id", "VARCHAR PRIMARY KEY"), ("run_id", "VARCHAR"), ("asset_key", "VARCHAR"),
        ("partition_key", "VARCHAR"), ("code_version", "VARCHAR"), ("data_version", "VARCHAR"),
        ("input_versions", "VARCHAR"), ("output_uri", "VARCHAR"), ("started_at", "TIMESTAMP"),
        ("finished_at", "TIMESTAMP"), ("status", "VARCHAR"), ("error", "VARCHAR"), ("metadata", "VARCHAR"),
    ],
    "registration_qc": [
        ("event_id", "VARCHAR PRIMARY KEY"), ("run_id", "VARCHAR"), ("slide_id", "VARCHAR"), ("source", "VARCHAR"),
        ("median_residual_um", "DOUBLE"), ("p90_residual_um", "DOUBLE"), ("matched_fraction", "DOUBLE"),
        ("transform", "VARCHAR"), ("passed", "BOOLEAN"), ("recorded_at", "TIMESTAMP"),
        ("transform_he_px_to_morphology_px", "VARCHAR"), ("n_he_nuclei", "BIGINT"), ("n_xenium_nuclei", "BIGINT"),
        ("residual_grid_um", "VARCHAR"), ("he_pixel_size_um", "DOUBLE"), ("implied_he_pixel_size_um", "DOUBLE"),
        ("magnification", "VARCHAR"), ("csv_median_residual_um", "DOUBLE"), ("csv_matched_fraction", "DOUBLE"),
        ("failures", "VARCHAR"), ("notes", "VARCHAR"), ("nonrigid_kept", "BOOLEAN"),
        ("nonrigid_median_residual_um", "DOUBLE"), ("nonrigid_max_displacement_um", "DOUBLE"),
    ],
    "annotation_qc": [
        ("event_id", "VARCHAR PRIMARY KEY"), ("run_id", "VARCHAR"), ("slide_id", "VARCHAR"), ("n_cells", "BIGINT"),
        ("frac_unknown", "DOUBLE"), ("frac_less10", "DOUBLE"), ("crosscheck_agreement", "DOUBLE"),
        ("n_flagged_clusters", "BIGINT"), ("passed", "BOOLEAN"), ("recorded_at", "TIMESTAMP"),
        ("tissue", "VARCHAR"), ("reference_sha256", "VARCHAR"), ("composition", "VARCHAR"),
        ("crosscheck_by_category", "VARCHAR"), ("frac_flagged_clusters", "DOUBLE"),
        ("singler_agreement", "DOUBLE"), ("singler_by_category", "VARCHAR"),
    ],
    "annotation_clusters": [
        ("event_id", "VARCHAR PRIMARY KEY"), ("run_id", "VARCHAR"), ("slide_id", "VARCHAR"), ("cluster", "VARCHAR"),
        ("n_cells", "BIGINT"), ("tangram_majority", "VARCHAR"), ("marker_label", "VARCHAR"), ("decision", "VARCHAR"),
        ("label", "VARCHAR"), ("disagreeing_fraction", "DOUBLE"), ("flagged", "BOOLEAN"), ("flag_reasons", "VARCHAR"),
        ("top_markers", "VARCHAR"), ("recorded_at", "TIMESTAMP"), ("singler_majority", "VARCHAR"),
        ("singler_agreement", "DOUBLE"),
    ],
    "patch_qc": [
        ("event_id", "VARCHAR PRIMARY KEY"), ("run_id", "VARCHAR"), ("slide_id", "VARCHAR"), ("magnification", "VARCHAR"),
        ("patch_id", "VARCHAR"), ("x0", "BIGINT"), ("y0", "BIGINT"), ("n_nuclei", "BIGINT"), ("dice", "DOUBLE"),
        ("jaccard", "DOUBLE"), ("bpq", "DOUBLE"), ("det_f1", "DOUBLE"), ("flagged", "BOOLEAN"), ("recorded_at", "TIMESTAMP"),
        ("focus_ratio", "DOUBLE"), ("ink_fraction", "DOUBLE"), ("flag_reasons", "VARCHAR"),
    ],
    "model_eval": [
        ("event_id", "VARCHAR PRIMARY KEY"), ("run_id", "VARCHAR"), ("model_id", "VARCHAR"), ("grouping", "VARCHAR"),
        ("split", "VARCHAR"), ("tissue", "VARCHAR"), ("class_name", "VARCHAR"), ("metric", "VARCHAR"),
        ("value", "DOUBLE"), ("recorded_at", "TIMESTAMP"),
    ],
    "model_training": [
        ("event_id", "VARCHAR PRIMARY KEY"), ("run_id", "VARCHAR"), ("model_key", "VARCHAR"), ("grouping", "VARCHAR"),
        ("epoch", "BIGINT"), ("train_loss", "DOUBLE"), ("val_loss", "DOUBLE"), ("seconds", "DOUBLE"),
        ("patches_per_s", "DOUBLE"), ("device", "VARCHAR"), ("size", "VARCHAR"), ("dataset_version", "VARCHAR"),
        ("recorded_at", "TIMESTAMP"),
    ],
    "prediction_agreement": [
        ("event_id", "VARCHAR PRIMARY KEY"), ("run_id", "VARCHAR"), ("slide_id", "VARCHAR"), ("model_id", "VARCHAR"),
        ("grouping", "VARCHAR"), ("class_name", "VARCHAR"), ("n_xenium", "BIGINT"), ("n_predicted", "BIGINT"),
        ("tp", "BIGINT"), ("precision", "DOUBLE"), ("recall", "DOUBLE"), ("f1", "DOUBLE"), ("recorded_at", "TIMESTAMP"),
    ],
    "slide_ingest": [
        ("event_id", "VARCHAR PRIMARY KEY"), ("run_id", "VARCHAR"), ("slide_id", "VARCHAR"), ("tissue", "VARCHAR"),
        ("n_cells", "BIGINT"), ("n_transcripts", "BIGINT"), ("n_genes", "BIGINT"), ("n_controls", "BIGINT"),
        ("n_unassigned", "BIGINT"), ("morphology_width", "BIGINT"), ("morphology_height", "BIGINT"),
        ("pixel_size_um", "DOUBLE"), ("synthetic", "BOOLEAN"), ("recorded_at", "TIMESTAMP"),
    ],
}
