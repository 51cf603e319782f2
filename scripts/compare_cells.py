"""The same cells in two runs side by side (e.g. fp32 against bf16): test micro-F1, training and
inference samples/s, one Markdown row per cell and mode both runs have.

    python scripts/compare_cells.py . runs/bf16-check     # the committed default grid against a run

A run is a folder with reports/tables/f1.csv (a finished run, or this repository's committed
reports) or with results/ (cells only: their metrics.json files are read).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from clsbench import tables

KEY = ["dataset", "model", "approach", "rank", "seed", "mode"]


def cells(run: Path) -> pd.DataFrame:
    table = run / "reports" / "tables" / "f1.csv"
    if table.exists():
        return pd.read_csv(table)
    files = sorted(run.glob("results/*/*/*/r*/s*/metrics*.json"))
    if not files:
        raise SystemExit(f"{run}: neither reports/tables/f1.csv nor cells under results/")
    return tables.collect(files)


def rows(a: Path, b: Path) -> list[str]:
    both = cells(a).merge(cells(b), on=KEY, suffixes=("_a", "_b"))
    out = [f"| cell | mode | micro-F1 {a} -> {b} | train samples/s | infer samples/s |", "|---|---|---|---|---|"]
    for _, r in both.iterrows():
        cell = f"{r['dataset']} {r['approach']} r{r['rank']} {r['model']}"
        out.append(f"| {cell} | {r['mode']} | {r['f1_micro_a']:.3f} -> {r['f1_micro_b']:.3f} "
                   f"| {ratio(r, 'train_samples_per_second')} | {ratio(r, 'infer_samples_per_second')} |")
    return out


def ratio(row, column: str) -> str:
    x, y = row[f"{column}_a"], row[f"{column}_b"]
    return "-" if pd.isna(x) or pd.isna(y) else f"{x:.2f} -> {y:.2f} ({y / x:.2f}x)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    args = parser.parse_args()
    print("\n".join(rows(args.run_a, args.run_b)))


if __name__ == "__main__":
    main()
