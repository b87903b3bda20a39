-- Clusters to review: flagged first, with the evidence (Tangram majority, marker label, markers, SingleR).
select
    c.slide_id, a.tissue, c.cluster, c.n_cells, c.tangram_majority, c.marker_label, c.decision, c.label,
    c.disagreeing_fraction, c.flagged, c.flag_reasons, c.top_markers, c.singler_majority, c.singler_agreement,
    c.run_id, c.recorded_at
from {{ ref('stg_annotation_clusters') }} c
left join {{ ref('stg_annotation_qc') }} a using (slide_id)
order by c.flagged desc, c.slide_id, c.n_cells desc
