from medret.jobs import script_context
from medret.stages import build_report_corpus

with script_context(snakemake.log[0]):
    build_report_corpus(
        name=snakemake.wildcards.dataset,
        entry=snakemake.params.entry,
        sources=snakemake.input.sources,
        manifest_path=snakemake.input.manifest,
        out_corpus=snakemake.output[0],
    )
