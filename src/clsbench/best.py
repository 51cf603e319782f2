"""The best cell of a dataset, chosen on the validation split (never on test).

    python -m clsbench.best --cells results/<dataset>/<model>/<approach>/r<rank>/s<seed> ... --out results/<dataset>/best.json

Each cell brings ``val/metrics.json`` (its validation predictions, made by the same predict step as
its test predictions; prompting cells in their first mode, score) and ``metrics.json`` (test). A
configuration (dataset, model, approach, rank) is ranked by its mean validation micro-F1 over its
seeds; ties go to the cheaper one (higher inference texts/s), then to the grid's order. The cell
named is that configuration's seed with the best validation micro-F1: the one a user applies
(``results/<dataset>/apply/<name>.csv``, ``python -m clsbench.apply --best best.json``). Its test
micro-/macro-F1 with CI, calibration and cost stand beside it, for reading, not for choosing.

A cell with per-label thresholds tuned on validation (``threshold: tuned``) is ranked by its 5-fold
cross-fitted validation micro-F1 (each fold decided with thresholds tuned on the others), its in-sample
figure kept beside as ``val_f1_micro_in_sample``: nothing is ranked on the texts it was fitted to.

``runner_up`` says how far the chosen configuration is ahead of the next one on validation: the mean
of the per-seed differences (seeds matched; a deterministic configuration's one seed against each) with
the claims' two-level bootstrap interval (seeds, then validation texts; cross-fitted decisions for
``threshold: tuned`` cells), so a choice that one training seed could flip shows as an interval across 0.

A configuration with a degenerate seed (:mod:`clsbench.health`, judged on validation: no label, one
answer, no better than a constant answer, far below TF-IDF) is never chosen; best.json lists it under
``excluded`` with each flag and its likely cause. Undertrained configurations are marked, not excluded.
"""
from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np

from . import UserError, approaches, health, layout
from .apply import parse_cell
from .cell import HPARAMS_FILE
from .io import json_arg, read_json, run_cli, write_json
from .thresholds import THRESHOLDS
from .tuning import TUNED_FILE

TEST_KEYS = ("f1_micro", "f1_micro_ci95", "f1_macro", "accuracy", "ece", "invalid_answers")
SELECTED_BY = ("validation micro-F1 (configuration: mean over seeds; cell: its best seed); cells with thresholds "
               "tuned on validation ranked by 5-fold cross-fitted thresholds, never the in-sample figure; a "
               "configuration with a degenerate seed on validation is excluded (clsbench.health)")
COST_KEYS = ("train_wall_seconds", "infer_samples_per_second", "trainable_params", "total_params", "peak_memory_mb")


def candidate(cell: str | Path) -> dict:
    """One cell's validation and test figures (``val/metrics.json``, ``metrics.json``)."""
    cell = Path(cell)
    for path in (cell / "val" / "metrics.json", cell / "metrics.json"):
        if not path.exists():
            raise UserError(f"{path}: missing; the cell's predictions were not evaluated (run snakemake for it)")
    val, test = read_json(cell / "val" / "metrics.json"), read_json(cell / "metrics.json")
    for path, record, rule in ((cell / "val" / "metrics.json", val, "evaluate_val"),
                               (cell / "metrics.json", test, "evaluate")):
        if not isinstance(record.get("f1_micro"), int | float) or isinstance(record.get("f1_micro"), bool):
            raise UserError(f"{path}: f1_micro is {record.get('f1_micro', 'missing')!r}, not a number; evaluate the "
                            f"cell again: snakemake --forcerun {rule} -- {path}")
    keys = parse_cell(cell)
    in_sample = {}
    if test.get(THRESHOLDS):  # threshold: tuned - its validation F1 used thresholds fitted on the same texts
        in_sample = {"val_f1_micro_in_sample": val["f1_micro"]}
        val = {**val, "f1_micro": cross_fitted_val_f1(cell, list(test[THRESHOLDS]))}
    return {"cell": str(cell), **keys, "val_f1_micro": val["f1_micro"], **in_sample, "n_val": val["n"],
            "test": {k: test[k] for k in TEST_KEYS if k in test}, "n_test": test["n"],
            "cost": {k: test[k] for k in COST_KEYS if k in test},
            # degenerate on validation (what selection may see); undertrained from its training record
            "flags": val.get("flags", []) + health.training_flags(test)}


def cross_fitted_val_f1(cell: Path, labels: list[str]) -> float:
    """The validation micro-F1 a ``threshold: tuned`` cell is ranked by: 5-fold cross-fitted thresholds
    on its cached validation probabilities (:func:`clsbench.thresholds.cross_fitted_f1_micro`)."""
    import pandas as pd

    from .metrics import indicator
    from .thresholds import cross_fitted_f1_micro

    val = pd.read_parquet(cell / "val" / "predictions.parquet")
    return cross_fitted_f1_micro(np.stack(val["probs"]).astype(np.float64), indicator(list(map(list, val["gold"])), labels))


def select(cells: list[str | Path], hparams: dict[str, dict] | None = None, dataset_settings: dict | None = None) -> dict:
    """best.json's record: the chosen cell, its configuration's seeds and every configuration ranked,
    with what applying the cell needs: its hyperparameters (``hparams``, by cell path, as the rules
    pass them; else the cell's hparams.json) and the dataset's preprocessing (``dataset_settings``)."""
    if not cells:
        raise UserError("no cells to choose from")
    rows = [candidate(c) for c in cells]
    datasets = sorted({r["dataset"] for r in rows})
    if len(datasets) > 1:
        raise UserError(f"cells of several datasets ({', '.join(datasets)}): choose per dataset")
    tfidf_val = [r["val_f1_micro"] for r in rows if r["approach"] == approaches.BASELINE]
    for r in rows:
        far = health.tfidf_flag(r["val_f1_micro"], max(tfidf_val) if tfidf_val else None)
        r["flags"] = r["flags"] + ([far] if far else [])
    configs: dict[tuple, list[dict]] = {}
    for r in rows:
        configs.setdefault((r["model"], r["approach"], r["rank"]), []).append(r)
    # a configuration with a degenerate seed is never recommended: it fails on some seeds
    excluded = {key: seeds for key, seeds in configs.items() if any(health.is_degenerate(s["flags"]) for s in seeds)}
    excluded_record = [{"model": key[0], "approach": key[1], "rank": key[2],
                        "cells": [{"cell": s["cell"], "seed": s["seed"], "flags": s["flags"]} for s in seeds
                                  if health.is_degenerate(s["flags"])]} for key, seeds in excluded.items()]
    if len(excluded) == len(configs):  # nothing to recommend: said in best.json, refused by apply
        return {"dataset": datasets[0], "selected_by": SELECTED_BY, "cell": None,
                "problem": f"every configuration of dataset '{datasets[0]}' has a degenerate seed on validation: "
                           "none can be recommended (see excluded: each flag names its likely cause)",
                "configurations": [], "excluded": excluded_record}

    def summary(order: int, key: tuple, seeds: list[dict]) -> dict:
        val = [s["val_f1_micro"] for s in seeds]
        test = [s["test"]["f1_micro"] for s in seeds]
        speed = [s["cost"].get("infer_samples_per_second") or 0.0 for s in seeds]
        return {"model": key[0], "approach": key[1], "rank": key[2], "seeds": sorted(s["seed"] for s in seeds),
                "val_f1_micro_mean": float(np.mean(val)), "val_f1_micro_sd": float(np.std(val, ddof=1)) if len(val) > 1 else None,
                "test_f1_micro_mean": float(np.mean(test)), "infer_samples_per_second": float(np.mean(speed)),
                "undertrained": any(f["flag"] == "undertrained" for s in seeds for f in s["flags"]), "_order": order}

    ranked = sorted((summary(i, k, v) for i, (k, v) in enumerate(configs.items()) if k not in excluded),
                    key=lambda c: (-c["val_f1_micro_mean"], -c["infer_samples_per_second"], c["_order"]))
    winner = ranked[0]
    seeds = configs[(winner["model"], winner["approach"], winner["rank"])]
    chosen = sorted(seeds, key=lambda s: (-s["val_f1_micro"], s["seed"]))[0]
    recorded = Path(chosen["cell"]) / HPARAMS_FILE
    hp = (hparams or {}).get(chosen["cell"]) or (read_json(recorded) if recorded.exists() else None)
    tuned = Path(chosen["cell"]).parent / TUNED_FILE  # the values its configuration's tuning chose
    if hp is not None and tuned.exists():
        hp = {**hp, **read_json(tuned)["hparams"]}
    runner = None
    if len(ranked) > 1:
        second = ranked[1]
        runner = {k: second[k] for k in ("model", "approach", "rank", "seeds", "val_f1_micro_mean")}
        runner.update(validation_margin(seeds, configs[(second["model"], second["approach"], second["rank"])]))
    return {"dataset": datasets[0], "selected_by": SELECTED_BY,
            **chosen, "hparams": hp, "dataset_settings": dataset_settings or {}, "runner_up": runner,
            "configurations": [{k: v for k, v in c.items() if k != "_order"} for c in ranked],
            "excluded": excluded_record}


def _val_predictions(row: dict, scratch: Path) -> Path:
    """The cell's validation predictions as ranked: cached, or with cross-fitted decisions where its
    thresholds were tuned on these texts (written to ``scratch``)."""
    import pandas as pd

    from .metrics import indicator
    from .thresholds import cross_fitted_decisions

    path = Path(row["cell"]) / "val" / "predictions.parquet"
    if "val_f1_micro_in_sample" not in row:
        return path
    labels = list(read_json(Path(row["cell"]) / "metrics.json")[THRESHOLDS])
    val = pd.read_parquet(path)
    decided = cross_fitted_decisions(np.stack(val["probs"]).astype(np.float64),
                                     indicator(list(map(list, val["gold"])), labels))
    val["pred"] = [[label for label, on in zip(labels, row_) if on] for row_ in decided]
    out = scratch / f"{row['model']}-{row['approach']}-r{row['rank']}-s{row['seed']}.parquet"
    val.to_parquet(out)
    return out


def validation_margin(chosen: list[dict], other: list[dict]) -> dict:
    """Validation micro-F1 of the chosen configuration minus another's, seed-aware (module docstring)."""
    import tempfile

    from .paired import paired_difference

    first = Path(chosen[0]["cell"])
    data_root = layout.data_dir_of(first).parent
    needed = [Path(r["cell"]) / "val" / "predictions.parquet" for r in chosen + other]
    needed.append(data_root / chosen[0]["dataset"] / "labels.json")
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        return {"margin": None, "margin_ci95": None, "interval": f"not computed: {missing[0]} missing"}
    by_seed = {r["seed"]: r for r in other}
    # seeds matched; without a common seed (a deterministic configuration's one seed), every pair
    pairs = [(a, by_seed[a["seed"]]) for a in chosen if a["seed"] in by_seed] or list(itertools.product(chosen, other))
    with tempfile.TemporaryDirectory() as scratch:
        as_cells = [tuple({"dataset": r["dataset"], "model": r["model"], "seed": r["seed"],
                           "_predictions": _val_predictions(r, Path(scratch))} for r in pair) for pair in pairs]
        result = paired_difference(as_cells, data_root)
    return {"margin": result["delta"], "margin_ci95": [result["ci_low"], result["ci_high"]],
            "per_seed": result["per_seed"], "training_variance": result["training_variance"],
            "interval": "two-level bootstrap over seeds, then validation texts (2000 draws)"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Name the best cell of a dataset by validation micro-F1.")
    parser.add_argument("--cells", nargs="+", required=True, help="the dataset's cell folders")
    parser.add_argument("--out", required=True, help="results/<dataset>/best.json")
    parser.add_argument("--hparams", type=json_arg, help="JSON: each cell's hyperparameters by cell folder (the rules pass them)")
    parser.add_argument("--dataset-settings", type=json_arg, help="JSON: the dataset's text_columns and max_words")
    args = parser.parse_args(argv)
    best = select(args.cells, args.hparams, args.dataset_settings)
    write_json(args.out, best)
    if best["cell"] is None:
        print(f"{args.out}: NO RECOMMENDATION: {best['problem']}")
    else:
        print(f"{args.out}: {best['cell']} (validation micro-F1 {best['val_f1_micro']:.3f}, "
              f"test {best['test']['f1_micro']:.3f})")
    for config in best["excluded"]:
        for cell in config["cells"]:
            print("excluded " + health.line(cell["cell"], cell["flags"]))
    if best.get("flags"):
        print("chosen " + health.line(best["cell"], best["flags"]))
    runner = best.get("runner_up")
    if runner and runner.get("margin") is not None:
        low, high = runner["margin_ci95"]
        print(f"ahead of {runner['approach']} {runner['model']} by {runner['margin']:+.3f} validation micro-F1 "
              f"[{low:+.3f}, {high:+.3f}]" + (" (the interval includes 0: a close call)" if low <= 0 <= high else ""))


if __name__ == "__main__":
    run_cli(main)
