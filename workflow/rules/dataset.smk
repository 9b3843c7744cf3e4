# Stage 1: dataset -> manifest (evaluated pairs), training table and report corpus.


rule demo_data:
    output:
        csv="resources/{dataset}/pairs.csv",
        images=directory("resources/{dataset}/images"),
    log:
        "logs/demo_data/{dataset}.log",
    wildcard_constraints:
        dataset=_alternatives(DEMO_DATASETS),
    conda:
        "../../envs/medret.yaml"
    threads: 2
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        options=demo_options,
    script:
        "../scripts/demo_data.py"


rule manifest:
    input:
        sources=dataset_sources,
    output:
        manifest=f"{RESULTS}/{{dataset}}/manifest.parquet",
        train=f"{RESULTS}/{{dataset}}/train.parquet",
        skipped=f"{RESULTS}/{{dataset}}/skipped.csv",
    log:
        "logs/manifest/{dataset}.log",
    conda:
        "../../envs/medret.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        entry=manifest_options,
    script:
        "../scripts/manifest.py"


# Its own job, so that editing extra_reports re-embeds texts only, never images.
rule corpus:
    input:
        sources=dataset_sources,
        manifest=f"{RESULTS}/{{dataset}}/manifest.parquet",
    output:
        f"{RESULTS}/{{dataset}}/corpus.parquet",
    log:
        "logs/corpus/{dataset}.log",
    conda:
        "../../envs/medret.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        entry=corpus_options,
    script:
        "../scripts/corpus.py"
