from medret.jobs import gpus_held, script_context
from medret.stages import compute_ranks

with script_context(snakemake.log[0], snakemake.threads):
    compute_ranks(
        manifest_path=snakemake.input.manifest,
        corpus_path=snakemake.input.corpus,
        text_path=snakemake.input.text,
        image_path=snakemake.input.images,
        specs_path=snakemake.input.specs,
        out_path=snakemake.output[0],
        block=snakemake.params.block,
        dataset=snakemake.wildcards.dataset,
        relevance=snakemake.params.relevance,
        gpus=gpus_held(snakemake.resources),
    )
