# CatMAE vs VideoMAE ViT-S/16 on Kinetics-400: pretrained checkpoints + (the Kinetics-400
# archive -> fetch -> extract -> resize, or the user's copy) -> splits -> fine-tune
# -> 5x3-view evaluation -> table, plots and report (`snakemake plan`: their cost, measured
# first). The paper run is config.yaml; the embedded demo is `--configfile demo/config.yaml`
# (README). Nothing here but wiring.
from snakemake.utils import min_version

min_version("9.0")


# A --configfile given on the command line replaces config.yaml (Snakemake passes jobs on a
# cluster the --configfile, not --replace-workflow-config: they would merge the two).
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


include: "rules/common.smk"
include: "rules/demo.smk"
include: "rules/checkpoints.smk"
include: "rules/fetch.smk"
include: "rules/extract.smk"
include: "rules/resize.smk"
include: "rules/data.smk"
include: "rules/transcode.smk"
include: "rules/finetune.smk"
include: "rules/evaluate.smk"
include: "rules/report.smk"
include: "rules/plan.smk"


rule all:
    default_target: True
    input:
        all_outputs(),
