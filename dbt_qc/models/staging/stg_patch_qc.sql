-- The patches of each slide's latest agreement run, per magnification.
{{ latest_run(source('lineage', 'patch_qc'), 'slide_id, magnification') }}
