from medret.jobs import gpus_held, script_context
from medret.stages import train_model

with script_context(snakemake.log[0], snakemake.threads):
    train_model(
        name=snakemake.wildcards.model,
        entry=snakemake.params.options,
        train_table=snakemake.input.table,
        train_images=snakemake.input.images,
        out_path=snakemake.output[0],
        threads=snakemake.threads,
        gpus=gpus_held(snakemake.resources),
    )
