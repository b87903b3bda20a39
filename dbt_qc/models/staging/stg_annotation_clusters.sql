-- The clusters of each slide's latest annotation run.
{{ latest_run(source('lineage', 'annotation_clusters'), 'slide_id') }}
