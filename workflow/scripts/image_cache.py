from medret.jobs import script_context
from medret.stages import build_image_cache

with script_context(snakemake.log[0]):
    build_image_cache(
        table_path=snakemake.input.table,
        out_path=snakemake.output[0],
        size=snakemake.params.size,
        fast=snakemake.params.fast,
        workers=snakemake.threads,
    )
