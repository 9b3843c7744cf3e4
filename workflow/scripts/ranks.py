from medret.stages import compute_ranks, gpus_held, script_context

with script_context(snakemake.log[0], snakemake.threads):
    compute_ranks(
        snakemake.input.manifest,
        snakemake.input.corpus,
        snakemake.input.text,
        snakemake.input.images,
        snakemake.input.specs,
        snakemake.output[0],
        block=snakemake.params.block,
        dataset=snakemake.wildcards.dataset,
        relevance=snakemake.params.relevance,
        gpus=gpus_held(snakemake.resources),
    )
