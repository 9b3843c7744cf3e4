# Stage 6: per-query ranks, both directions, every level.


rule ranks:
    input:
        manifest=f"{RESULTS}/{{dataset}}/manifest.parquet",
        corpus=f"{RESULTS}/{{dataset}}/corpus.parquet",
        text=f"{RESULTS}/{{dataset}}/embeddings/{{model}}/text.h5",
        images=f"{RESULTS}/{{dataset}}/embeddings/{{model}}/images/{{corruption}}.h5",
        specs=f"{RESULTS}/{{dataset}}/corruptions/{{corruption}}.parquet",
    output:
        f"{RESULTS}/{{dataset}}/ranks/{{model}}/{{corruption}}.parquet",
    log:
        "logs/ranks/{dataset}/{model}/{corruption}.log",
    conda:
        "../../envs/medret.yaml"
    threads: 1
    resources:
        gpu=0,  # scored on the CPU in bounded tiles (evaluation.block)
        mem_mb=4000,
        runtime=60,
    params:
        block=scoring_block,
        relevance=dataset_relevance,
        columns=RANK_COLUMNS,  # the table's format: a table of another is rebuilt (rerun trigger)
    script:
        "../scripts/ranks.py"
