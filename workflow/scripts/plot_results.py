from medret.stages import plot_results, script_context

with script_context(snakemake.log[0]):
    plot_results(
        snakemake.input.metrics,
        snakemake.input.robustness,
        snakemake.wildcards.corruption,
        snakemake.output.recall,
        snakemake.output.robustness,
        kind=snakemake.params.kind,
    )
