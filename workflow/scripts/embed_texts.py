from medret.stages import embed_texts, gpus_held, script_context

with script_context(snakemake.log[0], snakemake.threads):
    embed_texts(
        snakemake.wildcards.model,
        snakemake.params.entry,
        snakemake.input.manifest,
        snakemake.input.corpus,
        snakemake.output[0],
        checkpoint=snakemake.input.checkpoint or None,
        text_model=snakemake.input.text_model or None,
        gpus=gpus_held(snakemake.resources),
    )
