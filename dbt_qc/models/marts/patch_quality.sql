-- Every patch of every slide's latest agreement run, with a quality band for maps and filters. A patch is
-- flagged for low Jaccard, defocus or marker ink (flag_reasons); rows recorded before the artefact measures
-- existed have no focus_ratio, ink_fraction or flag_reasons.
select
    slide_id, magnification, patch_id, x0, y0, n_nuclei, dice, jaccard, bpq, det_f1, flagged,
    focus_ratio, ink_fraction, coalesce(flag_reasons, case when flagged then 'low_jaccard' else '' end) as flag_reasons,
    case when flagged then 'flagged' when jaccard is null then 'undefined' else 'good' end as quality_band,
    run_id, recorded_at
from {{ ref('stg_patch_qc') }}
