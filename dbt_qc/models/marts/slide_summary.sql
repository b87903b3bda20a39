-- One row per slide: what was ingested, how well it registered, what it is made of, how its
-- patches agree, and where it stands (the cohort page of the QC dashboard).
with slides as (
    select slide_id from {{ ref('stg_slide_ingest') }}
    union select slide_id from {{ ref('stg_registration_qc') }}
    union select slide_id from {{ ref('stg_annotation_qc') }}
    union select distinct slide_id from {{ ref('stg_patch_qc') }}
),
patches as (
    select slide_id, magnification, count(*) as n_patches, sum(n_nuclei) as n_nuclei,
           median(dice) as median_dice, median(jaccard) as median_jaccard, median(bpq) as median_bpq,
           median(det_f1) as median_det_f1, avg(flagged::int) as frac_flagged, count(*) filter (where jaccard is null) as n_undefined
    from {{ ref('stg_patch_qc') }}
    group by all
),
failures as (
    select slide_id, count(*) filter (where status = 'failure') as n_failed_materializations,
           max(finished_at) as last_materialized_at
    from {{ ref('stg_materializations') }}
    where slide_id is not null
    group by all
),
predictions as (
    select slide_id, sum(tp) / nullif(sum(n_predicted), 0) as prediction_label_precision
    from {{ ref('stg_prediction_agreement') }}
    group by all
)
select
    s.slide_id,
    coalesce(a.tissue, i.tissue) as tissue,
    coalesce(i.synthetic, false) as synthetic,
    i.n_cells, i.n_transcripts, i.n_genes,
    r.registration_source, r.median_residual_um, r.p90_residual_um, r.matched_fraction, r.registration_passed,
    r.registration_failures,
    a.frac_unknown, a.frac_less10, a.crosscheck_agreement, a.singler_agreement, a.n_flagged_clusters, a.annotation_passed, a.composition,
    a.reference_sha256,
    p40.n_patches as n_patches_40x, p20.n_patches as n_patches_20x,
    p40.median_dice as median_dice_40x, p40.median_jaccard as median_jaccard_40x, p40.median_bpq as median_bpq_40x,
    p40.median_det_f1 as median_det_f1_40x, p40.frac_flagged as frac_flagged_40x,
    p20.median_jaccard as median_jaccard_20x, p20.frac_flagged as frac_flagged_20x,
    pr.prediction_label_precision,
    coalesce(f.n_failed_materializations, 0) as n_failed_materializations, f.last_materialized_at,
    case
        when r.registration_passed = false or a.annotation_passed = false then 'fail'
        when r.registration_passed is null or a.annotation_passed is null or p40.n_patches is null then 'incomplete'
        when p40.frac_flagged > 0.5 or p20.frac_flagged > 0.5 then 'fail'
        else 'pass'
    end as qc_status
from slides s
left join {{ ref('stg_slide_ingest') }} i using (slide_id)
left join {{ ref('stg_registration_qc') }} r using (slide_id)
left join {{ ref('stg_annotation_qc') }} a using (slide_id)
left join patches p40 on p40.slide_id = s.slide_id and p40.magnification = '40x'
left join patches p20 on p20.slide_id = s.slide_id and p20.magnification = '20x'
left join failures f on f.slide_id = s.slide_id
left join predictions pr on pr.slide_id = s.slide_id
