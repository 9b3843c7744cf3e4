# Stage 5: embeddings. Text once per model; images once per (model, corruption), every level.
# A job runs its model on a GPU only when it holds one (resources: gpu); image embedding does.


rule embed_texts:
    input:
        unpack(model_inputs),
        manifest=f"{RESULTS}/{{dataset}}/manifest.parquet",
        corpus=f"{RESULTS}/{{dataset}}/corpus.parquet",
    output:
        f"{RESULTS}/{{dataset}}/embeddings/{{model}}/text.h5",
    log:
        "logs/embed_texts/{dataset}/{model}.log",
    conda:
        "../../envs/medret.yaml"
    threads: 2
    resources:
        gpu=0,  # once per model, on the CPU; --set-resources embed_texts:gpu=1 for a large corpus
        mem_mb=4000,
        runtime=60,
    params:
        entry=model_options,
    script:
        "../scripts/embed_texts.py"


rule embed_images:
    input:
        unpack(model_inputs),
        manifest=f"{RESULTS}/{{dataset}}/manifest.parquet",
        cache=f"{RESULTS}/{{dataset}}/images/eval.h5",
        specs=f"{RESULTS}/{{dataset}}/corruptions/{{corruption}}.parquet",
    output:
        f"{RESULTS}/{{dataset}}/embeddings/{{model}}/images/{{corruption}}.h5",
    log:
        "logs/embed_images/{dataset}/{model}/{corruption}.log",
    benchmark:
        "logs/benchmarks/embed_images/{dataset}/{model}/{corruption}.tsv"
    conda:
        "../../envs/medret.yaml"
    threads: 2  # the cache reader beside the forward pass (on a CPU: the forward pass's threads)
    resources:
        gpu=gpu_request,
        mem_mb=8000,
        runtime=120,
    params:
        entry=model_options,
        corruption=corruption_entry,
    script:
        "../scripts/embed_images.py"


rule embed_prompts:
    input:
        unpack(model_inputs),
        manifest=f"{RESULTS}/{{dataset}}/manifest.parquet",
    output:
        f"{RESULTS}/{{dataset}}/embeddings/{{model}}/prompts.h5",
    log:
        "logs/embed_prompts/{dataset}/{model}.log",
    conda:
        "../../envs/medret.yaml"
    threads: 2
    resources:
        gpu=0,  # a few prompts, on the CPU
        mem_mb=4000,
        runtime=30,
    params:
        entry=model_options,
        prompts=prompt_options,
    script:
        "../scripts/embed_prompts.py"
