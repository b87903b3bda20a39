-- The latest registration of each slide.
select slide_id, source as registration_source, median_residual_um, p90_residual_um, matched_fraction,
       transform, passed as registration_passed, magnification, he_pixel_size_um, implied_he_pixel_size_um,
       failures as registration_failures, nonrigid_kept, nonrigid_median_residual_um, nonrigid_max_displacement_um,
       run_id, recorded_at
from {{ source('lineage', 'registration_qc') }}
qualify row_number() over (partition by slide_id order by recorded_at desc) = 1
