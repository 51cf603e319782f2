"""clsbench.export: what the model card says each approach's weights are, and --best's refusal."""
import json
import subprocess
import sys

from conftest import REPO

from clsbench import approaches, export


def test_the_model_card_says_what_each_approach_exported():
    assert export.how_exported(approaches.get("head"), {"quantization": "nf4"}).startswith("LoRA merged")
    assert export.how_exported(approaches.get("instruct"), {"quantization": "nf4"}).startswith("LoRA merged")
    assert export.how_exported(approaches.get("frozen"), {"quantization": "nf4"}).startswith("the frozen base")
    encoder = export.how_exported(approaches.get("encoder"), {"learning_rate": 1e-4})
    assert encoder.startswith("every weight fine-tuned") and "merged" in encoder and "LoRA merged" not in encoder


def test_export_best_names_the_cell_of_best_json_or_refuses_one_that_names_none(tmp_path, monkeypatch):
    (tmp_path / "best.json").write_text(json.dumps({"cell": "results/d/m/head/r8/s42"}))
    assert export.best_cell(tmp_path / "best.json", "export") == "results/d/m/head/r8/s42"
    # best.json of a run elsewhere (runs/default/results/d/best.json): its cell is found in that run
    run = tmp_path / "runs" / "default"
    (run / "results" / "d" / "m" / "head" / "r8" / "s42").mkdir(parents=True)
    (run / "results" / "d" / "best.json").write_text(json.dumps({"cell": "results/d/m/head/r8/s42"}))
    monkeypatch.chdir(tmp_path)
    assert export.best_cell("runs/default/results/d/best.json", "export") == str(run / "results/d/m/head/r8/s42")
    (tmp_path / "none.json").write_text(json.dumps({"cell": None, "problem": "every configuration is degenerate"}))
    run = subprocess.run([sys.executable, "-m", "clsbench.export", "--best", str(tmp_path / "none.json"), "--out",
                          str(tmp_path / "out")], capture_output=True, text=True,
                         env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip().endswith("none.json: names no cell (every configuration is degenerate); fix the flagged "
                                       "cells and rerun snakemake, or pass --cell to export a cell of your choice")
    assert not (tmp_path / "out").exists()
