"""Equal-effort tuning on the validation split: the same number of trials for every trainable approach.

    tune: {trials: 8, metric: f1_micro, seed: 0}          # grid-wide; approaches.<name>.tune overrides

Each configuration (dataset × model × approach × rank) gets ``trials`` Snakemake jobs, trained on the
training split with the grid's first seed and scored on validation (never test). Trial 0 is the
configured hyperparameters; trials 1..N-1 are drawn from the search space by Optuna's
``QMCSampler`` (scrambled Sobol points: a few trials still spread over the space) with a fixed
seed, so the trials are known before any runs (independent jobs:
cached, resumable, routed to a cluster) and the same draws serve every configuration. The trial
with the best validation metric wins (ties: the lower trial, so the configured point when it ties);
a degenerate trial (:mod:`clsbench.health`) never wins unless every one is. A trial with per-label
thresholds tuned on validation is scored with cross-fitted thresholds. ``tuned.json`` beside the
configuration's seeds records every trial, the chosen values and the trials' training time; the
final cells (every seed) train with the chosen values. ``trials: 0`` keeps the configured values.

Successive halving with one rung (``rung_epochs: K``, default 0: off): every trial of an approach
trained over epochs stops after K epochs of its full schedule (the learning-rate schedule of
``max_epochs``, not one of K epochs) and is scored on validation there; the trial chosen at the rung
keeps its checkpoint, and the configuration's first-seed cell, which has the trial's seed and
values, resumes from it and trains on to the end with early stopping, as the trial would have. A
configuration of N trials and E epochs then trains N*K + (E - K) epochs instead of N*E (3 trials of
3 epochs, K = 1: 5 instead of 9). The price is the known bias of a short horizon: a trial is chosen
by its validation figure after K epochs, which favours values that learn fast (high learning
rates). Fitted approaches have no epochs: their trials run whole. Checkpoints of the trials not
chosen are removed by the tune step.

Search space (``tune.space`` replaces it; a pair of numbers is a log-uniform range, any other list a
choice): learning rates from a quarter to four times the configured value; for head, frozen and
encoder also ``class_weights`` (none / balanced) and, on multi-label data, ``threshold`` (0.5 /
tuned); for the fitted approaches' logistic regression (TF-IDF, embed, SetFit) the inverse
regularisation ``C`` (0.1 to 100), and ``class_weights`` where the approach has it; SetFit's
``body_learning_rate`` as a learning rate.
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np

from . import UserError, approaches, health, layout
from .io import json_arg, read_json, run_cli, write_json

TUNABLE = tuple(approaches.names(stages="train") + approaches.names(stages="fit"))
DEFAULTS = {"trials": 0, "metric": "f1_micro", "seed": 0, "rung_epochs": 0}
METRICS = {"f1_micro": "both", "f1_macro": "both", "f1_weighted": "both", "accuracy": "single",
           "subset_accuracy": "multi"}
TUNED_FILE = "tuned.json"  # results/<dataset>/<model>/<approach>/r<rank>/tuned.json


def settings(config: dict, approach: str) -> dict:
    """The tune block of an approach: the grid's ``tune``, then ``approaches.<approach>.tune``."""
    merged = {**DEFAULTS, **(config.get("tune") or {})}
    merged.update((config["approaches"].get(approach) or {}).get("tune") or {})
    if approach not in TUNABLE:
        merged["trials"] = 0  # nothing trains: nothing to tune
    return merged


def default_space(approach: str, hp: dict, multi_label: bool) -> dict:
    """The search space of :mod:`the module docstring <clsbench.tuning>` around the configured values."""
    fitted = approaches.get(approach).stages == "fit"  # a logistic regression on features: its C
    space = {"C": [0.1, 100.0]} if fitted else {}
    for key in ("learning_rate", "head_learning_rate", "body_learning_rate"):
        if hp.get(key):
            space[key] = [hp[key] / 4, hp[key] * 4]
    if approach in ("head", "frozen", "encoder"):
        space["class_weights"] = ["none", "balanced"]
        if multi_label:
            space["threshold"] = [0.5, "tuned"]
    elif fitted and "class_weights" in hp:
        space["class_weights"] = ["none", "balanced"]
    return space


def rung_epochs(config: dict, approach: str) -> int:
    """The epochs a trial of ``approach`` trains before it is scored (0: all of them): ``rung_epochs``
    for an approach trained over epochs, 0 for a fitted one."""
    tune = settings(config, approach)
    return int(tune["rung_epochs"] or 0) if tune["trials"] and approaches.get(approach).epoch_trained else 0


def space_of(config: dict, approach: str, hp: dict, multi_label: bool) -> dict:
    return settings(config, approach).get("space") or default_space(approach, hp, multi_label)


def distributions(space: dict) -> dict:
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    out = {}
    for key, values in space.items():
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
        if numeric and len(values) == 2 and values[0] > 0:
            out[key] = FloatDistribution(min(values), max(values), log=True)
        else:
            out[key] = CategoricalDistribution(list(values))
    return out


def trials(config: dict, approach: str, hp: dict, multi_label: bool) -> list[dict]:
    """The hyperparameters each trial overrides: ``{}`` for trial 0 (the configured point), then
    Optuna draws from the space (floats to three significant digits). The same for every call."""
    tune = settings(config, approach)
    if tune["trials"] == 0:
        return []
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.QMCSampler(seed=tune["seed"], scramble=True)
    study = optuna.create_study(sampler=sampler)
    dists = distributions(space_of(config, approach, hp, multi_label))
    out = [{}]
    for _ in range(tune["trials"] - 1):
        params = study.ask(dists).params
        out.append({k: float(f"{v:.3g}") if isinstance(v, float) else v for k, v in params.items()})
    return out


def check(config: dict, approach: str, hp: dict, multi_label: bool, where: str) -> None:
    """Bad tune blocks, one line each, before any job: one trial, a rung at or past the last epoch, a
    one-point space, a metric the dataset's labels cannot give."""
    tune = settings(config, approach)
    if tune["trials"] == 1:
        raise UserError(f"{where}.trials: 1 trial runs only the configured values; write 0 (no tuning) or 2 or more")
    if tune["trials"] == 0:
        return
    rung = rung_epochs(config, approach)
    if rung and rung >= hp.get("max_epochs", 0):
        raise UserError(f"{where}.rung_epochs: {rung} is not fewer than the {hp.get('max_epochs')} epochs its trials "
                        f"train (max_epochs), so nothing is saved; write fewer, or 0 to train every trial whole")
    kind = METRICS[tune["metric"]]
    if kind != "both" and (kind == "multi") != multi_label:
        raise UserError(f"{where}.metric: '{tune['metric']}' needs {kind}-label data; use f1_micro or f1_macro")
    for key, values in space_of(config, approach, hp, multi_label).items():
        if len(set(map(str, values))) < 2:
            raise UserError(f"{where}.space.{key}: one point ({values}) leaves nothing to tune; give two values or "
                            f"a range [low, high], or leave {key} out")
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
        if numeric and len(values) == 2 and min(values) <= 0:
            raise UserError(f"{where}.space.{key}: a range [low, high] is log-uniform and needs low > 0 (got {values})")


def score(val_dir: Path, train_info: dict, metric: str, labels: list[str], multi_label: bool) -> float:
    """A trial's validation figure; cross-fitted where its thresholds were tuned on these texts."""
    from .metrics import classification_metrics, indicator
    from .thresholds import THRESHOLDS, cross_fitted_decisions

    metrics = read_json(val_dir / "metrics.json")
    if not train_info.get(THRESHOLDS):
        return float(metrics[metric])
    import pandas as pd

    val = pd.read_parquet(val_dir / "predictions.parquet")
    gold_rows = list(map(list, val["gold"]))
    pred = cross_fitted_decisions(np.stack(val["probs"]).astype(np.float64), indicator(gold_rows, labels))
    pred_rows = [[label for label, on in zip(labels, row) if on] for row in pred]
    return float(classification_metrics(gold_rows, pred_rows, labels, multi_label)[metric])


def select(trial_dirs: list[Path], overrides: list[dict], metric: str, labels_json: Path) -> dict:
    """tuned.json's record: every trial's validation figure, flags and training time, and the winner."""
    if len(trial_dirs) != len(overrides):
        raise UserError(f"{len(trial_dirs)} trial folders for {len(overrides)} trials")
    meta = read_json(labels_json)
    rows = []
    for i, (folder, override) in enumerate(zip(trial_dirs, overrides)):
        folder = Path(folder)
        info = read_json(folder / "train_info.json")
        flags = read_json(folder / "val" / "metrics.json").get("flags", [])
        rows.append({"trial": i, "hparams": override, "value": score(folder / "val", info, metric, meta["labels"],
                                                                     meta["multi_label"]),
                     "degenerate": health.is_degenerate(flags), "flags": health.names(flags),
                     "train_seconds": info.get("train_wall_seconds"), "epochs": info.get("epochs_run"),
                     "stopped_at_rung": bool(info.get("stopped_at_rung"))})
    sound = [r for r in rows if not r["degenerate"]] or rows
    best = max(sound, key=lambda r: (r["value"], -r["trial"]))
    rung = max((r["epochs"] or 0 for r in rows if r["stopped_at_rung"]), default=0)
    return {"metric": metric, "selected_on": "validation", "rung_epochs": rung,
            "chosen_trial": best["trial"], "hparams": best["hparams"],
            "value": best["value"], "configured_value": rows[0]["value"],
            "tuning_seconds": float(sum(r["train_seconds"] or 0.0 for r in rows)), "trials": rows}


def chosen_trial(cell_dir: str | Path) -> Path | None:
    """The folder of the trial its configuration's tuned.json chose, trained with the cell's seed: the
    first seed's final cell trains exactly what that trial trained when their hyperparameters agree."""
    try:
        cell, results = layout.Cell.at(cell_dir)
    except UserError:
        return None  # trained outside a run's results/ (python -m clsbench.cell train --out-dir anywhere)
    tuned_file = results.parent / cell.configuration / TUNED_FILE
    if not tuned_file.exists():
        return None
    return results.parent / cell.trial(read_json(tuned_file)["chosen_trial"])


def drop_unchosen_checkpoints(trial_dirs: list[Path], chosen: int) -> None:
    """Remove the rung checkpoints of the trials not chosen: nothing will continue them."""
    for i, folder in enumerate(trial_dirs):
        if i != chosen:
            shutil.rmtree(Path(folder) / layout.CHECKPOINTS, ignore_errors=True)


def describe(tuned: dict) -> str:
    """``learning_rate=0.0003, class_weights=balanced (trial 3 of 8)``: the tables' Tuned column."""
    values = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in tuned["hparams"].items())
    rung = f", chosen after {tuned['rung_epochs']} epoch(s)" if tuned.get("rung_epochs") else ""
    return f"{values or 'as configured'} (trial {tuned['chosen_trial']} of {len(tuned['trials'])}{rung})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Choose a configuration's hyperparameters from its trials (validation).")
    parser.add_argument("--trials", required=True, type=json_arg, help="JSON list: the hyperparameters each trial overrides")
    parser.add_argument("--metric", default="f1_micro")
    parser.add_argument("--labels", required=True, help="the dataset's labels.json")
    parser.add_argument("--out", required=True, help="results/<dataset>/<model>/<approach>/r<rank>/tuned.json")
    parser.add_argument("trial_dirs", nargs="+", help="the trials' cell folders, in trial order")
    args = parser.parse_args(argv)
    tuned = select([Path(d) for d in args.trial_dirs], args.trials, args.metric, Path(args.labels))
    write_json(args.out, tuned)
    drop_unchosen_checkpoints([Path(d) for d in args.trial_dirs], tuned["chosen_trial"])
    print(f"{args.out}: {describe(tuned)}; validation {tuned['metric']} {tuned['value']:.3f} "
          f"(configured {tuned['configured_value']:.3f}); trials trained for {tuned['tuning_seconds']:.0f} s")


if __name__ == "__main__":
    run_cli(main)
