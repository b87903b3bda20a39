-- The latest annotation of each slide.
select slide_id, tissue, n_cells as n_annotated_cells, frac_unknown, frac_less10, crosscheck_agreement,
       n_flagged_clusters, frac_flagged_clusters, passed as annotation_passed, reference_sha256, composition,
       crosscheck_by_category, singler_agreement, singler_by_category, run_id, recorded_at
from {{ source('lineage', 'annotation_qc') }}
qualify row_number() over (partition by slide_id order by recorded_at desc) = 1
