from medret.jobs import script_context
from medret.stages import compute_findings

with script_context(snakemake.log[0]):
    compute_findings(
        dataset=snakemake.wildcards.dataset,
        manifest_path=snakemake.input.manifest,
        rank_paths=snakemake.input.ranks,
        out_path=snakemake.output[0],
        evaluation=snakemake.params.evaluation,
        relevance=snakemake.params.relevance,
    )
