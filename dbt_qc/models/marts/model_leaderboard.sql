-- Each evaluated model's held-out scores, best binary PQ first.
with totals as (
    select model_id, grouping, split,
           max(value) filter (where metric = 'detection_f1') as detection_f1,
           max(value) filter (where metric = 'bpq') as bpq,
           max(value) filter (where metric = 'mpq') as mpq,
           max(value) filter (where metric = 'tissue_accuracy') as tissue_accuracy,
           max(recorded_at) as evaluated_at
    from {{ ref('stg_model_eval') }}
    where tissue = 'all' and class_name = 'all'
    group by all
),
per_class as (
    select model_id, avg(value) as mean_class_f1
    from {{ ref('stg_model_eval') }}
    where tissue = 'all' and class_name <> 'all' and metric = 'f1'
    group by all
)
select t.*, p.mean_class_f1, rank() over (partition by t.grouping order by t.bpq desc nulls last) as rank_in_grouping
from totals t
left join per_class p using (model_id)
