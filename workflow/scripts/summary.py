from medret.stages import script_context
from medret.summary import write_summary

with script_context(snakemake.log[0]):
    write_summary(
        snakemake.wildcards.dataset,
        snakemake.input.metrics,
        snakemake.input.robustness,
        snakemake.input.comparisons,
        snakemake.output[0],
        snakemake.params.corruptions,
        snakemake.params.evaluation,
        manifest_path=snakemake.input.manifest,
        embedding_paths=snakemake.input.embeddings,
    )
