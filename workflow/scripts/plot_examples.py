from medret.stages import plot_examples, script_context

with script_context(snakemake.log[0]):
    plot_examples(
        snakemake.input.manifest,
        snakemake.input.cache,
        snakemake.input.specs,
        snakemake.wildcards.corruption,
        snakemake.params.entry,
        snakemake.params.n_examples,
        snakemake.output,
    )
