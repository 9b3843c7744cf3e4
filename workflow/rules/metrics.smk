# Stage 7: metrics with bootstrap confidence intervals, and robustness summaries.


rule metrics:
    input:
        manifest=f"{RESULTS}/{{dataset}}/manifest.parquet",
        corpus=f"{RESULTS}/{{dataset}}/corpus.parquet",
        ranks=dataset_ranks,
    output:
        metrics=report(
            f"{RESULTS}/{{dataset}}/metrics.csv",
            caption="../report/metrics.rst",
            category="Tables",
        ),
        robustness=report(
            f"{RESULTS}/{{dataset}}/robustness.csv",
            caption="../report/robustness.rst",
            category="Tables",
        ),
        comparisons=report(
            f"{RESULTS}/{{dataset}}/comparisons.csv",
            caption="../report/comparisons.rst",
            category="Tables",
        ),
    log:
        "logs/metrics/{dataset}.log",
    conda:
        "../../envs/medret.yaml"
    threads: 1
    resources:
        mem_mb=metrics_memory,
        runtime=60,
    params:
        evaluation=bootstrap_options,
        relevance=dataset_relevance,
    script:
        "../scripts/metrics.py"


rule findings:
    input:
        manifest=f"{RESULTS}/{{dataset}}/manifest.parquet",
        ranks=dataset_ranks,
    output:
        report(
            f"{RESULTS}/{{dataset}}/findings.csv",
            caption="../report/findings.rst",
            category="Tables",
        ),
    log:
        "logs/findings/{dataset}.log",
    conda:
        "../../envs/medret.yaml"
    threads: 1
    resources:
        mem_mb=metrics_memory,
        runtime=60,
    params:
        evaluation=findings_options,
        relevance=dataset_relevance,
    script:
        "../scripts/findings.py"


rule placement:
    input:
        manifest=f"{RESULTS}/{{dataset}}/manifest.parquet",
        ranks=dataset_ranks,
    output:
        report(
            f"{RESULTS}/{{dataset}}/placement.csv",
            caption="../report/placement.rst",
            category="Tables",
        ),
    log:
        "logs/placement/{dataset}.log",
    conda:
        "../../envs/medret.yaml"
    threads: 1
    resources:
        mem_mb=metrics_memory,
        runtime=60,
    params:
        corruptions=CORRUPTIONS,
        evaluation=bootstrap_options,
    script:
        "../scripts/placement.py"


rule classification:
    input:
        manifest=f"{RESULTS}/{{dataset}}/manifest.parquet",
        prompts=dataset_prompt_embeddings,
        images=dataset_image_embeddings,
    output:
        table=report(
            f"{RESULTS}/{{dataset}}/classification.csv",
            caption="../report/classification.rst",
            category="Tables",
        ),
        comparisons=f"{RESULTS}/{{dataset}}/classification_comparisons.csv",
    log:
        "logs/classification/{dataset}.log",
    conda:
        "../../envs/medret.yaml"
    threads: 1
    resources:
        mem_mb=metrics_memory,
        runtime=60,
    params:
        options=classification_options,
        evaluation=bootstrap_options,
        relevance=dataset_uncertain_labels,
    script:
        "../scripts/classification.py"


rule summary:
    input:
        manifest=f"{RESULTS}/{{dataset}}/manifest.parquet",
        embeddings=dataset_image_embeddings,
        metrics=f"{RESULTS}/{{dataset}}/metrics.csv",
        robustness=f"{RESULTS}/{{dataset}}/robustness.csv",
        comparisons=f"{RESULTS}/{{dataset}}/comparisons.csv",
        findings=f"{RESULTS}/{{dataset}}/findings.csv",
        placement=f"{RESULTS}/{{dataset}}/placement.csv",
        classification=f"{RESULTS}/{{dataset}}/classification.csv",
    output:
        report(
            f"{RESULTS}/{{dataset}}/summary.md",
            caption="../report/summary.rst",
            category="Tables",
        ),
    log:
        "logs/summary/{dataset}.log",
    localrule: True
    conda:
        "../../envs/medret.yaml"
    params:
        corruptions=CORRUPTIONS,
        evaluation=display_options,
        relevance=dataset_relevance,
    script:
        "../scripts/summary.py"
