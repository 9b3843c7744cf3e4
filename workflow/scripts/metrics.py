from medret.stages import compute_metrics, script_context

with script_context(snakemake.log[0]):
    compute_metrics(
        snakemake.wildcards.dataset,
        snakemake.input.manifest,
        snakemake.input.corpus,
        snakemake.input.ranks,
        snakemake.output.metrics,
        snakemake.output.robustness,
        snakemake.output.comparisons,
        snakemake.params.evaluation,
        snakemake.params.relevance,
    )
