from medret.stages import generate_demo, script_context

with script_context(snakemake.log[0], snakemake.threads):
    generate_demo(snakemake.output.csv, snakemake.params.options, workers=snakemake.threads)
