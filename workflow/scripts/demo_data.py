from medret.jobs import script_context
from medret.stages import generate_demo

with script_context(snakemake.log[0], snakemake.threads):
    generate_demo(out_csv=snakemake.output.csv, entry=snakemake.params.options, workers=snakemake.threads)
