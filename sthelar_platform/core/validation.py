"""Great Expectations (1.x) validation of stage tables, run in an ephemeral context.

Used by the asset checks (dagster-ge does not support GX 1.x); the library returns plain
results so it stays free of Dagster.
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass

import pandas as pd


@dataclass(frozen=True)
class ValidationOutcome:
    success: bool
    n_expectations: int
    failures: list[str]


def validate_frame(df: pd.DataFrame, expectations: list) -> ValidationOutcome:
    """Validate ``df`` against GX expectation objects; failures name the expectation and column."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx

    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    name = f"v{uuid.uuid4().hex[:8]}"
    batch = (ctx.data_sources.add_pandas(name).add_dataframe_asset(name)
             .add_batch_definition_whole_dataframe(name).get_batch(batch_parameters={"dataframe": df}))
    suite = gx.ExpectationSuite(name=name, expectations=expectations)
    result = batch.validate(suite)
    failures = []
    for r in result.results:
        if not r.success:
            cfg = r.expectation_config
            unexpected = (r.result or {}).get("unexpected_count")
            name = f"{cfg.type}({cfg.kwargs.get('column', '')})" if cfg is not None else "expectation"
            failures.append(name
                            + (f": {unexpected} unexpected values" if unexpected is not None else ""))
    return ValidationOutcome(success=bool(result.success), n_expectations=len(result.results), failures=failures)


def cell_labels_expectations(allowed: list[str]) -> list:
    """GX expectations of a cell_labels table: unique ids, known categories, confidence in [0, 1]."""
    import great_expectations as gx

    e = gx.expectations
    return [e.ExpectColumnValuesToBeUnique(column="cell_id"), e.ExpectColumnValuesToNotBeNull(column="cell_id"),
            e.ExpectColumnValuesToNotBeNull(column="category"),
            e.ExpectColumnValuesToBeInSet(column="category", value_set=allowed),
            e.ExpectColumnValuesToBeBetween(column="confidence", min_value=0, max_value=1),
            e.ExpectColumnValuesToBeBetween(column="n_transcripts", min_value=0)]


def counts_expectations() -> list:
    """GX expectations of a count table: unique ids, non-negative counts."""
    import great_expectations as gx

    e = gx.expectations
    return [e.ExpectColumnValuesToBeUnique(column="cell_id"), e.ExpectColumnValuesToNotBeNull(column="cell_id"),
            e.ExpectColumnValuesToBeBetween(column="n_transcripts", min_value=0),
            e.ExpectColumnValuesToBeBetween(column="min_count", min_value=0)]
