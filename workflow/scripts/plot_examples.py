from medret.jobs import script_context
from medret.stages import plot_examples

with script_context(snakemake.log[0]):
    plot_examples(
        manifest_path=snakemake.input.manifest,
        cache_path=snakemake.input.cache,
        specs_path=snakemake.input.specs,
        corruption=snakemake.wildcards.corruption,
        entry=snakemake.params.entry,
        n_examples=snakemake.params.n_examples,
        out_paths=snakemake.output,
    )
