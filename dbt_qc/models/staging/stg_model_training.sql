select * exclude (event_id) from {{ source('lineage', 'model_training') }}
