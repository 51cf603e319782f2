"""Fixed against tuned settings, from two finished runs of the same grid: one Markdown row per trained
configuration (test micro-/macro-F1 fixed -> tuned, the values tuning chose with their validation
figure, the trials' training time, undertrained before/after), for a report's README.

    python scripts/compare_runs.py runs/patents-fixed runs/patents-tuned

Reads each run's reports/tables/f1.csv and the tuned run's results/<dataset>/<model>/<approach>/r<rank>/tuned.json.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

KEY = ["dataset", "model", "approach", "rank", "mode"]
SHORT = {"learning_rate": "lr", "head_learning_rate": "head lr", "class_weights": "class weights"}


def chosen(tuned: dict) -> str:
    values = tuned["hparams"] if tuned["chosen_trial"] else {}
    shown = ", ".join(f"{SHORT.get(k, k)} {v:.3g}" if isinstance(v, float) else f"{SHORT.get(k, k)} {v}"
                      for k, v in sorted(values.items()))
    return f"{shown or 'as configured'} (trial {tuned['chosen_trial']}; val {tuned['configured_value']:.3f} -> {tuned['value']:.3f})"


def rows(fixed_dir: Path, tuned_dir: Path) -> list[str]:
    fixed = pd.read_csv(fixed_dir / "reports/tables/f1.csv")
    tuned = pd.read_csv(tuned_dir / "reports/tables/f1.csv")
    both = fixed.merge(tuned, on=KEY + ["seed"], suffixes=("_fixed", "_tuned"))
    out = ["| dataset | configuration | micro-F1 fixed -> tuned | macro-F1 fixed -> tuned | chosen on validation "
           "| trials' training | undertrained fixed / tuned |", "|---|---|---|---|---|---|---|"]
    for _, r in both.iterrows():
        record = tuned_dir / "results" / r["dataset"] / r["model"] / r["approach"] / f"r{r['rank']}" / "tuned.json"
        if not record.exists():
            continue
        t = json.loads(record.read_text())
        seconds = t["tuning_seconds"]
        cost = f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"
        mode = "" if r["mode"] in ("classifier", "score") else f", {r['mode']}"
        out.append(f"| {r['dataset']} | {r['approach']} r{r['rank']} {r['model']}{mode} | {r['f1_micro_fixed']:.3f} -> "
                   f"{r['f1_micro_tuned']:.3f} | {r['f1_macro_fixed']:.3f} -> {r['f1_macro_tuned']:.3f} | {chosen(t)} "
                   f"| {cost} | {'yes' if r['undertrained_fixed'] else 'no'} / {'yes' if r['undertrained_tuned'] else 'no'} |")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fixed", type=Path, help="working directory of the run with fixed settings")
    parser.add_argument("tuned", type=Path, help="working directory of the same grid with a tune block")
    args = parser.parse_args()
    print("\n".join(rows(args.fixed, args.tuned)))


if __name__ == "__main__":
    main()
