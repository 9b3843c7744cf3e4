from medret.stages import build_corruption_specs, script_context

with script_context(snakemake.log[0]):
    build_corruption_specs(
        snakemake.input.manifest, snakemake.wildcards.corruption, snakemake.params.entry, snakemake.output[0]
    )
