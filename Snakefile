# clsbench: causal LLM with a classification head vs instruction tuning vs BERT-style encoders.
# The grid lives in config.yaml (offline, CPU, minutes) or configs/paper.yaml (the paper's grid);
# all logic lives in src/clsbench, the rules only wire files together.
import os
import sys

from snakemake.utils import min_version

min_version("9.0")

sys.path.insert(
    0, os.path.join(workflow.basedir, "src")
)  # dry runs work without installing the package

from clsbench import UserError
from clsbench.check import read_yaml

# The default grid: config.yaml of the working directory, else this checkout's (under --directory
# elsewhere), unless --configfile gave a grid (Snakemake would otherwise deep-merge the two grids);
# --config overrides alone (the SLURM profile's threads) apply on top of it.
DEFAULT_CONFIG = os.path.abspath(
    "config.yaml"
    if os.path.exists("config.yaml")
    else os.path.join(workflow.basedir, "config.yaml")
)

# A run started in the checkout itself works in runs/default/ (results/ and reports/ there, out of
# git), so that it never writes into the committed reports/ (scripts/publish_reports.py copies a
# run's reports there when asked).
if os.path.samefile(os.getcwd(), workflow.basedir):

    workdir: "runs/default"


if "datasets" not in config:
    try:
        read_yaml(
            DEFAULT_CONFIG
        )  # a syntax error named by file and line (Snakemake's names neither)
    except UserError as err:
        raise WorkflowError(str(err))

    configfile: DEFAULT_CONFIG


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/predict.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/tune.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/best.smk"


rule all:
    default_target: True
    input:
        rules.decision.output,
        all_metrics(),
        # listed as targets so that a deleted one is made again (an input of best.json alone is not
        # rebuilt while best.json is up to date); best.json then follows
        [f"{cell.path}/val/metrics.json" for cell in CELLS],
        rules.tables.output,
        rules.claims.output,
        rules.figures.output,
        best_targets(),
