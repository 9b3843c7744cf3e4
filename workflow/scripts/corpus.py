from medret.stages import build_report_corpus, script_context

with script_context(snakemake.log[0]):
    build_report_corpus(
        snakemake.wildcards.dataset,
        snakemake.params.entry,
        snakemake.input.sources,
        snakemake.input.manifest,
        snakemake.output[0],
    )
