-- The latest whole-slide prediction run of each slide.
{{ latest_run(source('lineage', 'prediction_agreement'), 'slide_id') }}
