from medret.jobs import script_context
from medret.stages import plot_classification

with script_context(snakemake.log[0]):
    plot_classification(
        table_path=snakemake.input[0],
        corruption=snakemake.wildcards.corruption,
        kind=snakemake.params.kind,
        out_paths=snakemake.output,
    )
