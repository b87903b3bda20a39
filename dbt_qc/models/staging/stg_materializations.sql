-- Every materialization attempt, with its duration and the slide it belongs to (NULL = cohort).
select
    event_id, run_id, asset_key, partition_key as slide_id, code_version, data_version, input_versions,
    output_uri, started_at, finished_at, status, error,
    date_diff('millisecond', started_at, finished_at) / 1000.0 as duration_s
from {{ source('lineage', 'materializations') }}
