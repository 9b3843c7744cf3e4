from medret.jobs import script_context
from medret.stages import compute_placement

with script_context(snakemake.log[0]):
    compute_placement(
        dataset=snakemake.wildcards.dataset,
        manifest_path=snakemake.input.manifest,
        rank_paths=snakemake.input.ranks,
        out_path=snakemake.output[0],
        corruptions=snakemake.params.corruptions,
        evaluation=snakemake.params.evaluation,
    )
