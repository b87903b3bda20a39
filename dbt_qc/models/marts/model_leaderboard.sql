-- Each evaluated model's held-out scores, best binary PQ first. Mean class F1 is over the classes the
-- ground truth holds (the mean_class_f1 row); evaluations recorded before that row average every class.
with totals as (
    select model_id, grouping, split,
           max(value) filter (where metric = 'detection_f1') as detection_f1,
           max(value) filter (where metric = 'bpq') as bpq,
           max(value) filter (where metric = 'mpq') as mpq,
           max(value) filter (where metric = 'mean_class_f1') as recorded_mean_class_f1,
           max(value) filter (where metric = 'tissue_accuracy') as tissue_accuracy,
           max(recorded_at) as evaluated_at
    from {{ ref('stg_model_eval') }}
    where tissue = 'all' and class_name = 'all'
    group by all
),
per_class as (
    select model_id, avg(value) as average_class_f1
    from {{ ref('stg_model_eval') }}
    where tissue = 'all' and class_name <> 'all' and metric = 'f1'
    group by all
)
select t.model_id, t.grouping, t.split, t.detection_f1, t.bpq, t.mpq, t.tissue_accuracy, t.evaluated_at,
       coalesce(t.recorded_mean_class_f1, p.average_class_f1) as mean_class_f1,
       rank() over (partition by t.grouping order by t.bpq desc nulls last) as rank_in_grouping
from totals t
left join per_class p using (model_id)
