# Stage 8: plots for people.


rule plot_results:
    input:
        metrics=f"{RESULTS}/{{dataset}}/metrics.csv",
        robustness=f"{RESULTS}/{{dataset}}/robustness.csv",
    output:
        recall=report(
            multiext(
                f"{RESULTS}/{{dataset}}/plots/{{corruption}}_recall", ".png", ".pdf"
            ),
            caption="../report/recall.rst",
            category="Plots",
        ),
        robustness=report(
            multiext(
                f"{RESULTS}/{{dataset}}/plots/{{corruption}}_robustness",
                ".png",
                ".pdf",
            ),
            caption="../report/robustness_plot.rst",
            category="Plots",
        ),
    log:
        "logs/plot_results/{dataset}/{corruption}.log",
    localrule: True
    conda:
        "../../envs/medret.yaml"
    params:
        kind=corruption_kind,
    script:
        "../scripts/plot_results.py"


rule plot_examples:
    input:
        manifest=f"{RESULTS}/{{dataset}}/manifest.parquet",
        cache=f"{RESULTS}/{{dataset}}/images/eval.h5",
        specs=f"{RESULTS}/{{dataset}}/corruptions/{{corruption}}.parquet",
    output:
        report(
            multiext(
                f"{RESULTS}/{{dataset}}/plots/{{corruption}}_examples", ".png", ".pdf"
            ),
            caption="../report/examples.rst",
            category="Plots",
        ),
    log:
        "logs/plot_examples/{dataset}/{corruption}.log",
    localrule: True
    conda:
        "../../envs/medret.yaml"
    params:
        entry=corruption_entry,
        n_examples=config["evaluation"]["examples"],
    script:
        "../scripts/plot_examples.py"


rule plot_findings:
    input:
        f"{RESULTS}/{{dataset}}/findings.csv",
    output:
        report(
            multiext(f"{RESULTS}/{{dataset}}/plots/findings", ".png", ".pdf"),
            caption="../report/findings_plot.rst",
            category="Plots",
        ),
    log:
        "logs/plot_findings/{dataset}.log",
    localrule: True
    conda:
        "../../envs/medret.yaml"
    params:
        corruptions=CORRUPTIONS,
        evaluation=display_options,
    script:
        "../scripts/plot_findings.py"


rule plot_classification:
    input:
        f"{RESULTS}/{{dataset}}/classification.csv",
    output:
        report(
            multiext(
                f"{RESULTS}/{{dataset}}/plots/{{corruption}}_classification",
                ".png",
                ".pdf",
            ),
            caption="../report/classification_plot.rst",
            category="Plots",
        ),
    log:
        "logs/plot_classification/{dataset}/{corruption}.log",
    localrule: True
    conda:
        "../../envs/medret.yaml"
    params:
        kind=corruption_kind,
    script:
        "../scripts/plot_classification.py"
