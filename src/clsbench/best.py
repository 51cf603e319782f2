"""The best cell of a dataset, chosen on the validation split (never on test).

    python -m clsbench.best --cells results/<dataset>/<model>/<approach>/r<rank>/s<seed> ... --out results/<dataset>/best.json

Each cell brings ``val/metrics.json`` (its validation predictions, made by the same predict step as
its test predictions; prompting cells in their first mode, score) and ``metrics.json`` (test). A
configuration (dataset, model, approach, rank) is ranked by its mean validation micro-F1 over its
seeds; ties go to the cheaper one (higher inference texts/s), then to the grid's order. The cell
named is that configuration's seed with the best validation micro-F1: the one a user applies
(``results/<dataset>/apply/<name>.csv``, ``python -m clsbench.apply --best best.json``). Its test
micro-/macro-F1 with CI, calibration and cost stand beside it, for reading, not for choosing.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from . import UserError
from .apply import parse_cell
from .cell import HPARAMS_FILE
from .io import read_json, run_cli, write_json

TEST_KEYS = ("f1_micro", "f1_micro_ci95", "f1_macro", "accuracy", "ece", "invalid_answers")
COST_KEYS = ("train_wall_seconds", "infer_samples_per_second", "trainable_params", "total_params", "peak_memory_mb")


def candidate(cell: str | Path) -> dict:
    """One cell's validation and test figures (``val/metrics.json``, ``metrics.json``)."""
    cell = Path(cell)
    for path in (cell / "val" / "metrics.json", cell / "metrics.json"):
        if not path.exists():
            raise UserError(f"{path}: missing; the cell's predictions were not evaluated (run snakemake for it)")
    val, test = read_json(cell / "val" / "metrics.json"), read_json(cell / "metrics.json")
    keys = parse_cell(cell)
    return {"cell": str(cell), **keys, "val_f1_micro": val["f1_micro"], "n_val": val["n"],
            "test": {k: test[k] for k in TEST_KEYS if k in test}, "n_test": test["n"],
            "cost": {k: test[k] for k in COST_KEYS if k in test}}


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
    configs: dict[tuple, list[dict]] = {}
    for r in rows:
        configs.setdefault((r["model"], r["approach"], r["rank"]), []).append(r)

    def summary(order: int, key: tuple, seeds: list[dict]) -> dict:
        val = [s["val_f1_micro"] for s in seeds]
        test = [s["test"]["f1_micro"] for s in seeds]
        speed = [s["cost"].get("infer_samples_per_second") or 0.0 for s in seeds]
        return {"model": key[0], "approach": key[1], "rank": key[2], "seeds": sorted(s["seed"] for s in seeds),
                "val_f1_micro_mean": float(np.mean(val)), "val_f1_micro_sd": float(np.std(val, ddof=1)) if len(val) > 1 else None,
                "test_f1_micro_mean": float(np.mean(test)), "infer_samples_per_second": float(np.mean(speed)),
                "_order": order}

    ranked = sorted((summary(i, k, v) for i, (k, v) in enumerate(configs.items())),
                    key=lambda c: (-c["val_f1_micro_mean"], -c["infer_samples_per_second"], c["_order"]))
    winner = ranked[0]
    seeds = configs[(winner["model"], winner["approach"], winner["rank"])]
    chosen = sorted(seeds, key=lambda s: (-s["val_f1_micro"], s["seed"]))[0]
    recorded = Path(chosen["cell"]) / HPARAMS_FILE
    hp = (hparams or {}).get(chosen["cell"]) or (read_json(recorded) if recorded.exists() else None)
    return {"dataset": datasets[0], "selected_by": "validation micro-F1 (configuration: mean over seeds; cell: best seed)",
            **chosen, "hparams": hp, "dataset_settings": dataset_settings or {},
            "configurations": [{k: v for k, v in c.items() if k != "_order"} for c in ranked]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Name the best cell of a dataset by validation micro-F1.")
    parser.add_argument("--cells", nargs="+", required=True, help="the dataset's cell folders")
    parser.add_argument("--out", required=True, help="results/<dataset>/best.json")
    parser.add_argument("--hparams", help="JSON: each cell's hyperparameters by cell folder (the rules pass them)")
    parser.add_argument("--dataset-settings", help="JSON: the dataset's text_columns and max_words")
    args = parser.parse_args(argv)
    best = select(args.cells, json.loads(args.hparams) if args.hparams else None,
                  json.loads(args.dataset_settings) if args.dataset_settings else None)
    write_json(args.out, best)
    print(f"{args.out}: {best['cell']} (validation micro-F1 {best['val_f1_micro']:.3f}, "
          f"test {best['test']['f1_micro']:.3f})")


if __name__ == "__main__":
    run_cli(main)
