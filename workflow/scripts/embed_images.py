from medret.jobs import gpus_held, script_context
from medret.stages import embed_images

with script_context(snakemake.log[0], snakemake.threads):
    embed_images(
        name=snakemake.wildcards.model,
        entry=snakemake.params.entry,
        corruption=snakemake.wildcards.corruption,
        corruption_entry=snakemake.params.corruption,
        manifest_path=snakemake.input.manifest,
        cache_path=snakemake.input.cache,
        specs_path=snakemake.input.specs,
        out_path=snakemake.output[0],
        files=dict(snakemake.input.items()),
        gpus=gpus_held(snakemake.resources),
        dataset=snakemake.wildcards.dataset,
    )
