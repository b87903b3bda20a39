-- Every patch of every slide's latest agreement run, with a quality band for maps and filters.
select
    slide_id, magnification, patch_id, x0, y0, n_nuclei, dice, jaccard, bpq, det_f1, flagged,
    case when jaccard is null then 'undefined' when flagged then 'flagged' else 'good' end as quality_band,
    run_id, recorded_at
from {{ ref('stg_patch_qc') }}
