# Stage 4 (trainable families only): train a model on a dataset's training split.


rule train_model:
    input:
        unpack(training_inputs),
    output:
        f"{RESULTS}/models/{{model}}/checkpoint.pt",
    log:
        "logs/train_model/{model}.log",
    benchmark:
        "logs/benchmarks/train_model/{model}.tsv"
    wildcard_constraints:
        model=_alternatives(TRAINED_MODELS),
    conda:
        "../../envs/medret.yaml"
    threads: 1  # the weights depend on the thread count on a CPU: keep it fixed
    resources:
        gpu=gpu_request,
        mem_mb=training_memory,
        runtime=60,
    params:
        options=training_options,
    script:
        "../scripts/train_model.py"
