# Stage 7: metrics with bootstrap confidence intervals, and robustness summaries.


rule metrics:
    input:
        manifest=f"{RESULTS}/{{dataset}}/manifest.parquet",
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
    log:
        "logs/metrics/{dataset}.log",
    localrule: True
    conda:
        "../../envs/medret.yaml"
    params:
        evaluation=config["evaluation"],
    script:
        "../scripts/metrics.py"
