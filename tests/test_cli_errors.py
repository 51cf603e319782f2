"""Every `python -m clsbench.<module>` entry point on a user's typical mistake (a path that is not
there, an argument that does not parse): exit 2 and one `error:` line naming the file or option,
never a traceback."""
import json
import re
import subprocess
import sys

import pytest
from conftest import REPO, TINY_HEAD_HP

METRICS = "results/d/m/head/r8/s1/metrics.json"  # a cell's metrics path that was never made
CASES = {
    "data: --spec not JSON": (["data", "--key", "d", "--spec", "{bad", "--out", "o"],
                              r"argument --spec: not JSON \(Expecting property name .*\): \{bad"),
    "data: file not there": (["data", "--key", "d", "--spec", '{"source": "files", "path": "gone.csv"}', "--out", "o"],
                             r"data file not found: gone.csv \(resolved from .*gone.csv\)"),
    "cell train: hyperparameter missing": (["cell", "train", "--approach", "head", "--model-json", "m.json",
                                            "--data-dir", "d", "--out-dir", "o", "--rank", "8", "--seed", "1",
                                            "--hparams", "{}"], r"^error: approaches.head.hparams: missing "
                                                                r"hyperparameter\(s\) \['batch_size', .*give them"),
    "models: folder not a model": (["models", "--key", "m", "--spec", '{"source": "local", "path": "gone"}', "--out", "o"],
                                   r"model 'm': gone is not a HF model directory"),
    "cell train: model not prepared": (["cell", "train", "--approach", "head", "--model-json", "gone/model.json",
                                        "--data-dir", "gone", "--out-dir", "o", "--rank", "8", "--seed", "1",
                                        "--hparams", json.dumps(TINY_HEAD_HP)], r"gone/model.json: not found \(resolved from .*\); check "
                                                            r"the path, or run snakemake for it"),
    "cell predict: --hparams not JSON": (["cell", "predict", "--approach", "head", "--source", "gone", "--data-dir",
                                          "gone", "--out-dir", "o", "--seed", "1", "--hparams", "lr=1"],
                                         r"argument --hparams: not JSON"),
    "metrics: labels not there": (["metrics", "--predictions", "gone.parquet", "--labels", "gone.json", "--out", "m.json"],
                                  r"gone.json: not found"),
    "tuning: --trials not JSON": (["tuning", "--trials", "[{]", "--labels", "l.json", "--out", "t.json", "gone"],
                                  r"argument --trials: not JSON"),
    "best: cell not evaluated": (["best", "--cells", "results/d/m/head/r8/s1", "--out", "b.json"],
                                 r"results/d/m/head/r8/s1/val/metrics.json: missing; .* \(run snakemake for it\)"),
    "tables: not a metrics path": (["tables", "--out-dir", "o", "gone/metrics.json"],
                                   r"gone/metrics.json: not a cell's metrics path \(results/<dataset>/"),
    "claims: metrics not there": (["claims", "--out-dir", "o", METRICS], rf"{METRICS}: not found"),
    "plots: not a metrics path": (["plots", "--out", "o", "gone/metrics.json"], r"not a cell's metrics path"),
    "decision: metrics not there": (["decision", METRICS, "--out-dir", "o", "--figures", "f", "--best", "b.json"],
                                    rf"{METRICS}: not found"),
    "apply: not a cell": (["apply", "--cell", "gone", "--input", "x.csv", "--output", "y.csv"],
                          r"--cell gone: not a cell folder"),
    "export: not a cell": (["export", "--cell", "gone", "--out", "o"], r"--cell gone: not a cell folder"),
    "check: config not there": (["check", "gone.yaml"], r"config file not found: gone.yaml"),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_each_command_line_names_the_mistake_in_one_line_without_a_traceback(tmp_path, case):
    args, message = CASES[case]
    run = subprocess.run([sys.executable, "-m", f"clsbench.{args[0]}", *args[1:]], cwd=tmp_path, capture_output=True,
                         text=True, env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin",
                                         "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 2, run.stdout + run.stderr
    assert "Traceback" not in run.stderr + run.stdout
    last = run.stderr.strip().splitlines()[-1]
    assert "error: " in last, run.stderr
    assert re.search(message, last), last
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())  # nothing half-made
