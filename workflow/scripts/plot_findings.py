from medret.jobs import script_context
from medret.stages import plot_findings

with script_context(snakemake.log[0]):
    plot_findings(
        findings_path=snakemake.input[0],
        corruptions=snakemake.params.corruptions,
        evaluation=snakemake.params.evaluation,
        out_paths=snakemake.output,
    )
