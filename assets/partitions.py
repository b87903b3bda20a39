"""The `slides` dynamic partitions: one per registered slide."""

from dagster import DynamicPartitionsDefinition

# One partition per slide; keys are validated slide ids (see sthelar_platform.core.ids).
slides_partitions = DynamicPartitionsDefinition(name="slides")
