from medret.jobs import gpus_held, script_context
from medret.stages import embed_texts

with script_context(snakemake.log[0], snakemake.threads):
    embed_texts(
        name=snakemake.wildcards.model,
        entry=snakemake.params.entry,
        manifest_path=snakemake.input.manifest,
        corpus_path=snakemake.input.corpus,
        out_path=snakemake.output[0],
        files=dict(snakemake.input.items()),
        gpus=gpus_held(snakemake.resources),
    )
