from dagster import DynamicPartitionsDefinition

# One partition per slide; keys are validated slide ids (see sthelar_platform.ids).
slides_partitions = DynamicPartitionsDefinition(name="slides")
