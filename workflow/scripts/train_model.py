from medret.stages import gpus_held, script_context, train_model

with script_context(snakemake.log[0], snakemake.threads):
    train_model(
        snakemake.wildcards.model,
        snakemake.params.options,
        snakemake.input.table,
        snakemake.input.images,
        snakemake.output[0],
        threads=snakemake.threads,
        gpus=gpus_held(snakemake.resources),
    )
