"""clsbench.apply's refusals before any model loads: one line naming the file and the fix, no traceback."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from clsbench import UserError, apply


def make_cell(root, approach="head", rank=8, hparams=True, data=True, adapter=False):
    cell = root / "results" / "news" / "m" / approach / f"r{rank}" / "s42"
    cell.mkdir(parents=True)
    if hparams:
        (cell / "hparams.json").write_text(json.dumps({"max_length": 32}))
    if adapter:
        (cell / "adapter").mkdir()
    if data:
        d = root / "results" / "data" / "news"
        d.mkdir(parents=True)
        (d / "labels.json").write_text(json.dumps({"labels": ["a", "b"], "multi_label": False}))
    (root / "new.csv").write_text("text\nshares rose\n")
    return cell


def test_a_cell_copied_without_its_prepared_dataset_is_named(tmp_path):
    cell = make_cell(tmp_path, data=False)
    with pytest.raises(UserError, match=r"results/data/news: the cell's prepared dataset is missing .* copy it with "
                                        r"the cell, or run snakemake for .*results/data/news/labels.json$"):
        apply.label(cell, tmp_path / "new.csv", tmp_path / "out.csv")


def test_a_trained_cell_without_its_adapter_is_named(tmp_path):
    cell = make_cell(tmp_path)
    with pytest.raises(UserError, match=r"s42/adapter: missing \(the cell was not trained, or was copied without "
                                        r"it\); copy it too, or train the cell again: snakemake -- .*train_info.json$"):
        apply.label(cell, tmp_path / "new.csv", tmp_path / "out.csv")


def test_a_copied_cell_missing_one_adapter_file_is_named_and_nothing_of_it_is_deleted(tmp_path):
    cell = make_cell(tmp_path, adapter=True)
    (cell / "adapter" / "base").mkdir()
    (cell / "adapter" / "base" / "config.json").write_text("{}")
    (cell / "adapter" / "adapter_config.json").write_text("{}")
    (cell / "adapter" / "SHA256SUMS").write_text("0" * 64 + "  adapter_model.safetensors\n" + "0" * 64
                                                 + "  adapter_config.json\n")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(UserError, match=r"adapter/SHA256SUMS: lists a missing file 'adapter_model.safetensors' "
                                        r"\(truncated or corrupted\); nothing was removed; copy it again from the run "
                                        r"that made it, or run snakemake there to rebuild it$"):
        apply.label(cell, tmp_path / "new.csv", tmp_path / "out.csv")
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # the copy is as it was


def test_a_label_holding_the_output_separator_is_refused_with_a_free_one(tmp_path):
    """'arts|culture' joined with '|' in the predicted column would read as two labels."""
    cell = make_cell(tmp_path, adapter=True)
    labels_json = tmp_path / "results" / "data" / "news" / "labels.json"
    labels_json.write_text(json.dumps({"labels": ["arts|culture", "sport"], "multi_label": True}))
    with pytest.raises(UserError, match=r"labels.json: label 'arts\|culture' holds '\|', the character that joins a "
                                        r"text's labels in the output \(1 such label\(s\)\); pass --label-separator ';' "
                                        r"\(no label holds it\)$"):
        apply.label(cell, tmp_path / "new.csv", tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists()


def test_a_cell_without_hparams_outside_a_project_asks_for_the_config(tmp_path, monkeypatch):
    """Run from a folder without config.yaml, through the CLI: one line, exit 2, no traceback."""
    cell = make_cell(tmp_path, hparams=False, adapter=True)
    monkeypatch.chdir(tmp_path)
    run = subprocess.run([sys.executable, "-m", "clsbench.apply", "--cell", str(cell), "--input", "new.csv",
                          "--output", "out.csv"], capture_output=True, text=True, cwd=tmp_path,
                         env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-1].endswith(
        f"s42/hparams.json: missing, and no config.yaml in {tmp_path}; pass the config the cell was made with: "
        "--config FILE")
    assert not (tmp_path / "out.csv").exists()


def test_an_input_apply_cannot_read_names_apply_s_own_option(tmp_path):
    """A ;-separated input: the fix is apply's --delimiter (not a dataset config key); with it, the
    input is read (then the cell would label it)."""
    cell = make_cell(tmp_path, adapter=True)
    (tmp_path / "new.csv").write_text("text;id\nshares rose;1\n")
    with pytest.raises(UserError, match=r"new.csv: the header is one column .* with delimiter ','; pass --delimiter ';'$"):
        apply.label(cell, tmp_path / "new.csv", tmp_path / "out.csv")
    table, texts = apply.read_texts(tmp_path / "new.csv", ["text"], None, {"delimiter": ";"})
    assert texts == ["shares rose"] and list(table.columns) == ["text", "id"]
    with pytest.raises(UserError, match=r"data file not found: missing.csv \(resolved from .*: .*/missing.csv\)$"):
        apply.read_texts(Path("missing.csv"), ["text"], None)
