select * exclude (event_id)
from {{ source('lineage', 'slide_ingest') }}
qualify row_number() over (partition by slide_id order by recorded_at desc) = 1
