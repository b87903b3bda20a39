-- The latest evaluation of each model.
{{ latest_run(source('lineage', 'model_eval'), 'model_id') }}
