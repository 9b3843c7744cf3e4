from medret.jobs import gpus_held, script_context
from medret.stages import embed_prompts

with script_context(snakemake.log[0], snakemake.threads):
    embed_prompts(
        name=snakemake.wildcards.model,
        entry=snakemake.params.entry,
        manifest_path=snakemake.input.manifest,
        options=snakemake.params.prompts,
        out_path=snakemake.output[0],
        files=dict(snakemake.input.items()),
        gpus=gpus_held(snakemake.resources),
    )
