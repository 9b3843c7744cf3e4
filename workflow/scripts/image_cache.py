from medret.stages import build_image_cache, script_context

with script_context(snakemake.log[0]):
    build_image_cache(
        snakemake.input.table,
        snakemake.output[0],
        size=snakemake.params.size,
        fast=snakemake.params.fast,
        workers=snakemake.threads,
    )
