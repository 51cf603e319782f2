"""One cell's step, for any approach of the registry (:mod:`clsbench.approaches`); what the rules run.

    python -m clsbench.cell train   --approach A --model-json M --data-dir D --out-dir O --rank R --seed S --hparams J
    python -m clsbench.cell predict --approach A --source ADAPTER_DIR|MODEL_JSON|CELL_DIR --data-dir D --out-dir O --seed S --hparams J [--splits test val] [--modes score]
    python -m clsbench.cell fit     --approach A [--model-json M] --data-dir D --out-dir O --seed S --hparams J
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import shutil
from pathlib import Path

from . import UserError, approaches, layout, staging, tuning
from .io import atomic_path, json_arg, read_json, run_cli, split_dir, write_json, write_train_record

HPARAMS_FILE = "hparams.json"  # a cell's hyperparameters, as its steps got them (clsbench.apply reads them)


def call(function, *args, **kwargs):
    """``function`` with the keyword arguments it takes (a trained cell's predict step needs no seed)."""
    accepted = inspect.signature(function).parameters
    return function(*args, **{k: v for k, v in kwargs.items() if k in accepted})


def trained_with(cell_dir: Path, hp: dict) -> bool:
    """Whether ``cell_dir`` holds a finished training with exactly these hyperparameters."""
    done = all((cell_dir / name).exists() for name in ("adapter", "train_info.json", HPARAMS_FILE))
    return done and read_json(cell_dir / HPARAMS_FILE) == hp


def trial_from_cell(trial: Path, out_dir: str | Path) -> str:
    """A trial's folder relative to the cell that took its training over (the run can move)."""
    return Path(os.path.relpath(trial.resolve(), Path(out_dir).resolve())).as_posix()


def copy_training(source: Path, out_dir: str | Path) -> dict:
    """A trained cell's training (adapter/, train log, train_info.json with ``reused_trial``) copied into
    ``out_dir``, each file atomically; its validation predictions stay behind (the predict step makes them)."""
    out_dir = Path(out_dir)
    for item in source.iterdir():
        if item.name in ("val", HPARAMS_FILE) or item.name.startswith("."):
            continue
        with atomic_path(out_dir / item.name, is_dir=item.is_dir()) as tmp:
            if item.is_dir():
                shutil.copytree(item, tmp, dirs_exist_ok=True)
            else:
                shutil.copyfile(item, tmp)
    info = {**read_json(source / "train_info.json"),  # where from, relative to the cell (it moves with its run)
            "reused_trial": trial_from_cell(source, out_dir)}
    write_train_record(out_dir, info)
    return info


def continue_trial(trial: Path, out_dir: str | Path) -> str | None:
    """Seed ``out_dir``'s checkpoints with those a tuning trial's rung left (:mod:`clsbench.tuning`), so
    the cell's training resumes where the trial stopped instead of training its first epochs again.
    Nothing when the cell has checkpoints of its own (a killed job resuming) or the trial left none
    (an approach that keeps none, frozen: its cell trains from the start, the same run). Returns the
    trial's folder relative to the cell, for ``train_info.json``'s ``continued_trial``."""
    source, target = trial / layout.CHECKPOINTS, Path(out_dir) / layout.CHECKPOINTS
    if not source.is_dir() or target.exists():
        return None
    with atomic_path(target, is_dir=True) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
        for state_file in Path(tmp).glob("checkpoint-*/trainer_state.json"):  # the best epoch's folder, in the cell
            state = read_json(state_file)
            if state.get("best_model_checkpoint"):
                state["best_model_checkpoint"] = str(target / Path(state["best_model_checkpoint"]).name)
                write_json(state_file, state)
    return trial_from_cell(trial, out_dir)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train, predict or fit one cell of any approach.")
    sub = parser.add_subparsers(dest="stage", required=True)
    stages = {name: sub.add_parser(name) for name in ("train", "predict", "fit")}
    stages["train"].add_argument("--model-json", required=True)
    stages["fit"].add_argument("--model-json", help="the model's model.json (fitted approaches that use a model)")
    stages["train"].add_argument("--rank", type=int, required=True)
    stages["train"].add_argument("--stop-after-epochs", type=int,
                                 help="a tuning trial's rung: stop after this many epochs of the full schedule, "
                                 "keeping the checkpoint (clsbench.tuning)")
    stages["predict"].add_argument("--source", required=True,
                                   help="the cell's adapter/ (trained approaches), the model's model.json (prompting "
                                   "an untrained model) or the cell folder (a fitted cell)")
    stages["predict"].add_argument("--splits", nargs="+", default=["test"], choices=["test", "val"],
                                   help="splits to predict with one model load (test into the cell folder, val "
                                   "into <cell>/val, with the approach's first mode only)")
    stages["predict"].add_argument("--modes", nargs="+", help="inference modes (default: every mode of the approach)")
    for a in stages.values():
        a.add_argument("--approach", required=True, choices=approaches.NAMES)
        a.add_argument("--data-dir", required=True)
        a.add_argument("--out-dir", required=True)
        a.add_argument("--seed", type=int, required=True)
        a.add_argument("--hparams", required=True, type=json_arg, help="the cell's hyperparameters as JSON")
        a.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    approach = approaches.get(args.approach)
    if args.stage == "train" and not approach.ranked and args.rank != 0:
        raise UserError(f"approach '{approach.name}' takes no LoRA rank: its cells are r0, not r{args.rank}")
    function = approach.entry(args.stage)
    common = {"data_dir": args.data_dir, "out_dir": args.out_dir, "seed": args.seed, "hp": args.hparams,
              "threads": args.threads}
    if args.stage == "train":
        trial = tuning.chosen_trial(args.out_dir)
        same = trial is not None and trained_with(trial, args.hparams)  # the tuning trained this very cell
        if same and not read_json(trial / "train_info.json").get("stopped_at_rung"):
            print(f"{args.out_dir}: reusing the training of {trial} (the chosen trial: same seed and hyperparameters)")
            info = copy_training(trial, args.out_dir)
        else:  # the trained model predicts what the predict step will ask for (one model load: clsbench.staging)
            continued = continue_trial(trial, args.out_dir) if same else None
            if continued:
                print(f"{args.out_dir}: continuing {trial} (the chosen trial, stopped at its rung) from its checkpoint")
            info = call(function, model_json=args.model_json, rank=args.rank, **common,
                        predict_after=staging.Stager(args.out_dir, args.hparams, args.data_dir),
                        **({"stop_after_epochs": args.stop_after_epochs} if args.stop_after_epochs else {}))
            if continued:
                info = write_train_record(args.out_dir, {**info, "continued_trial": continued})
    elif args.stage == "predict":
        source = read_json(args.source)["path"] if args.source.endswith(".json") else args.source
        extra = {"splits": tuple(dict.fromkeys(args.splits)), **({"modes": tuple(args.modes)} if args.modes else {})}
        if approach.stages == "train" and staging.take(args.out_dir, source, args.hparams, args.data_dir,
                                                       extra["splits"], args.modes):
            info = read_json(split_dir(args.out_dir, extra["splits"][0]) / "predict_info.json")
        else:
            info = call(function, source, **common, **extra)  # the adapter/, the model's folder or the cell
    else:
        if approach.model_slug is None and not args.model_json:
            raise UserError(f"approach '{approach.name}' fits on a model: pass --model-json")
        info = call(function, model_json=args.model_json, **common)
    if args.stage != "predict" or (approach.stages == "predict" and "test" in args.splits):
        write_json(Path(args.out_dir) / HPARAMS_FILE, common["hp"])  # what the cell's predictions depend on
    print(json.dumps(info, indent=2, default=str))


if __name__ == "__main__":
    run_cli(main)
