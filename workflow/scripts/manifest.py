from medret.stages import build_manifest, script_context

with script_context(snakemake.log[0]):
    build_manifest(
        snakemake.wildcards.dataset,
        snakemake.params.entry,
        snakemake.input.sources,
        snakemake.output.manifest,
        snakemake.output.train,
        snakemake.output.skipped,
    )
