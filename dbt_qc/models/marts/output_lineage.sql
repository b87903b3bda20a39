-- Which code version, inputs, reference atlas and registration produced each current output.
with latest as (
    select * from {{ ref('stg_materializations') }}
    where status = 'success'
    qualify row_number() over (partition by asset_key, slide_id order by finished_at desc) = 1
)
select
    l.asset_key, l.slide_id, l.code_version, l.data_version, l.input_versions, l.output_uri, l.finished_at,
    l.run_id,
    case when l.asset_key in ('tangram_labels', 'clusters', 'cell_types') then a.reference_sha256 end as reference_sha256,
    r.registration_source, r.transform as registration_transform
from latest l
left join {{ ref('stg_annotation_qc') }} a on a.slide_id = l.slide_id
left join {{ ref('stg_registration_qc') }} r on r.slide_id = l.slide_id
