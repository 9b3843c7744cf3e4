from medret.jobs import script_context
from medret.stages import classify

with script_context(snakemake.log[0]):
    classify(
        dataset=snakemake.wildcards.dataset,
        manifest_path=snakemake.input.manifest,
        prompt_paths=snakemake.input.prompts,
        image_paths=snakemake.input.images,
        out_table=snakemake.output.table,
        out_comparisons=snakemake.output.comparisons,
        options=snakemake.params.options,
        evaluation=snakemake.params.evaluation,
        relevance=snakemake.params.relevance,
    )
