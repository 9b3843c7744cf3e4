from medret.jobs import script_context
from medret.stages import build_corruption_specs

with script_context(snakemake.log[0]):
    build_corruption_specs(
        manifest_path=snakemake.input.manifest,
        name=snakemake.wildcards.corruption,
        entry=snakemake.params.entry,
        out_path=snakemake.output[0],
    )
