from medret.jobs import script_context
from medret.stages import plot_results

with script_context(snakemake.log[0]):
    plot_results(
        metrics_path=snakemake.input.metrics,
        robustness_path=snakemake.input.robustness,
        corruption=snakemake.wildcards.corruption,
        recall_paths=snakemake.output.recall,
        robustness_paths=snakemake.output.robustness,
        kind=snakemake.params.kind,
    )
