# Stage 5: embeddings. Text once per model; images once per (model, corruption), every level.


rule embed_texts:
    input:
        manifest=f"{RESULTS}/{{dataset}}/manifest.parquet",
        corpus=f"{RESULTS}/{{dataset}}/corpus.parquet",
        checkpoint=model_checkpoint,
    output:
        f"{RESULTS}/{{dataset}}/embeddings/{{model}}/text.h5",
    log:
        "logs/embed_texts/{dataset}/{model}.log",
    conda:
        "../../envs/medret.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        entry=model_entry,
    script:
        "../scripts/embed_texts.py"


rule embed_images:
    input:
        manifest=f"{RESULTS}/{{dataset}}/manifest.parquet",
        cache=f"{RESULTS}/{{dataset}}/images/eval.h5",
        specs=f"{RESULTS}/{{dataset}}/corruptions/{{corruption}}.parquet",
        checkpoint=model_checkpoint,
    output:
        f"{RESULTS}/{{dataset}}/embeddings/{{model}}/images/{{corruption}}.h5",
    log:
        "logs/embed_images/{dataset}/{model}/{corruption}.log",
    benchmark:
        "logs/benchmarks/embed_images/{dataset}/{model}/{corruption}.tsv"
    conda:
        "../../envs/medret.yaml"
    threads: 1
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=120,
    params:
        entry=model_entry,
        corruption=corruption_entry,
    script:
        "../scripts/embed_images.py"
