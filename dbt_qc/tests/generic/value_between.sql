{# Rows whose value lies outside [min_value, max_value] (NULL passes: use not_null for that). #}
{% test value_between(model, column_name, min_value, max_value) %}
select {{ column_name }} as value
from {{ model }}
where {{ column_name }} < {{ min_value }} or {{ column_name }} > {{ max_value }}
{% endtest %}
