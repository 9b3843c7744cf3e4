from medret.stages import embed_images, gpus_held, script_context

with script_context(snakemake.log[0], snakemake.threads):
    embed_images(
        snakemake.wildcards.model,
        snakemake.params.entry,
        snakemake.wildcards.corruption,
        snakemake.params.corruption,
        snakemake.input.manifest,
        snakemake.input.cache,
        snakemake.input.specs,
        snakemake.output[0],
        checkpoint=snakemake.input.checkpoint or None,
        text_model=snakemake.input.text_model or None,
        gpus=gpus_held(snakemake.resources),
        dataset=snakemake.wildcards.dataset,
    )
