from medret.jobs import script_context
from medret.stages import build_manifest

with script_context(snakemake.log[0]):
    build_manifest(
        name=snakemake.wildcards.dataset,
        entry=snakemake.params.entry,
        sources=snakemake.input.sources,
        out_manifest=snakemake.output.manifest,
        out_train=snakemake.output.train,
        out_skipped=snakemake.output.skipped,
    )
