from medret.jobs import script_context
from medret.stages import write_summary

with script_context(snakemake.log[0]):
    write_summary(
        dataset=snakemake.wildcards.dataset,
        metrics_path=snakemake.input.metrics,
        robustness_path=snakemake.input.robustness,
        comparisons_path=snakemake.input.comparisons,
        manifest_path=snakemake.input.manifest,
        embedding_paths=snakemake.input.embeddings,
        corruptions=snakemake.params.corruptions,
        evaluation=snakemake.params.evaluation,
        findings_path=snakemake.input.findings,
        placement_path=snakemake.input.placement,
        classification_path=snakemake.input.classification,
        uncertain_labels=snakemake.params.relevance["uncertain_labels"],
        out_path=snakemake.output[0],
    )
