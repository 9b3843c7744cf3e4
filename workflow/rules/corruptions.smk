# Stage 3: deterministic corruption specs (one row per pair, level and repeat).


rule corruption_specs:
    input:
        manifest=f"{RESULTS}/{{dataset}}/manifest.parquet",
    output:
        f"{RESULTS}/{{dataset}}/corruptions/{{corruption}}.parquet",
    log:
        "logs/corruption_specs/{dataset}/{corruption}.log",
    conda:
        "../../envs/medret.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        entry=corruption_entry,
    script:
        "../scripts/corruption_specs.py"
