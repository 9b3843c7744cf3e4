# medret: robustness of contrastive image-report models for chest X-ray retrieval.
# Table of contents: each included file is one stage, in data-flow order (docs/running.md, "Workflow").
import os
import sys

from snakemake.utils import min_version

min_version("9.0")

# medret comes from this checkout, for the Snakefile and for every job: a job in a conda environment
# (--sdm conda) gets only medret's dependencies from envs/medret.yaml, since conda cannot install a
# project by relative path (Snakemake copies the environment file into .snakemake/conda/ first).
MEDRET_SRC = os.path.join(workflow.basedir, "src")
sys.path.insert(0, MEDRET_SRC)
# Jobs parse this file again: add the path once.
_PATHS = (MEDRET_SRC, *os.getenv("PYTHONPATH", "").split(os.pathsep))
os.environ.update(PYTHONPATH=os.pathsep.join(dict.fromkeys(p for p in _PATHS if p)))


# The demo is the default study. A config file given on the command line replaces it rather than
# being merged into it (Snakemake merges --configfile into a configfile: directive's config);
# --config key=value alone still edits the demo. SLURM jobs get the same --configfiles.
if not workflow.config_settings.configfiles:

    configfile: os.path.join(workflow.basedir, "config", "config.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


# A wildcard can only take a configured name, so no rule matches a path it was not meant for.
wildcard_constraints:
    dataset=_alternatives(DATASETS),
    model=_alternatives(MODELS),
    corruption=_alternatives(CORRUPTIONS),
    subset="eval|train",


include: "workflow/rules/dataset.smk"
include: "workflow/rules/images.smk"
include: "workflow/rules/corruptions.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/embed.smk"
include: "workflow/rules/ranks.smk"
include: "workflow/rules/metrics.smk"
include: "workflow/rules/plots.smk"


# Only when jobs are about to run (not in a dry run): results_dir must accept new files.
onstart:
    try:
        check_output_dir(RESULTS, "results_dir")
    except MedretError as exc:
        sys.exit(f"medret config error: {exc}")


# At the end of a run, finished or not: the warnings the results carry (pairs left out, a cache too
# small for a model), which otherwise reach only the job logs and summary.md.
onsuccess:
    print_run_warnings(RESULTS, list(DATASETS), list(MODELS), list(CORRUPTIONS))


onerror:
    print_run_warnings(RESULTS, list(DATASETS), list(MODELS), list(CORRUPTIONS))


rule all:
    default_target: True
    input:
        final_outputs(),
        intermediate_outputs(),
