from medret.stages import script_context, train_model

with script_context(snakemake.log[0], snakemake.threads):
    train_model(
        snakemake.wildcards.model,
        snakemake.params.entry,
        snakemake.input.table,
        snakemake.input.images,
        snakemake.output[0],
        threads=snakemake.threads,
    )
