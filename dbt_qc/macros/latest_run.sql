{# All rows of the most recent run per key. QC tables are append-only: a rerun supersedes the earlier rows. #}
{% macro latest_run(relation, keys, ts='recorded_at') -%}
select * exclude (_run_ts, _run_rank)
from (
    select *, dense_rank() over (partition by {{ keys }} order by _run_ts desc, run_id desc) as _run_rank
    from (select *, max({{ ts }}) over (partition by {{ keys }}, run_id) as _run_ts from {{ relation }})
)
where _run_rank = 1
{%- endmacro %}
