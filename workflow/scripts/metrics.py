from medret.jobs import script_context
from medret.stages import compute_metrics

with script_context(snakemake.log[0]):
    compute_metrics(
        dataset=snakemake.wildcards.dataset,
        manifest_path=snakemake.input.manifest,
        corpus_path=snakemake.input.corpus,
        rank_paths=snakemake.input.ranks,
        out_metrics=snakemake.output.metrics,
        out_robustness=snakemake.output.robustness,
        out_comparisons=snakemake.output.comparisons,
        evaluation=snakemake.params.evaluation,
        relevance=snakemake.params.relevance,
    )
