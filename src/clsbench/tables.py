"""The F1 table: one CSV row per cell, and a Markdown table laid out like the paper's Table 2
(approach/rank blocks × model rows, one micro-F1 column per dataset)."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import pandas as pd

from .io import atomic_path, read_json, run_cli

CELL_RE = re.compile(r"results/(?P<dataset>[^/]+)/(?P<model>[^/]+)/(?P<approach>[^/]+)/r(?P<rank>\d+)/s(?P<seed>\d+)/metrics\.json$")
COLUMNS = ["dataset", "model", "approach", "rank", "seed", "f1_micro", "f1_macro", "trainable_params", "total_params",
           "epochs_run", "best_epoch", "train_samples_per_second", "infer_samples_per_second", "n",
           "f1_micro_ci_low", "f1_micro_ci_high", "ece", "brier"]
APPROACH_TITLES = {"head": "Classification head", "frozen": "Frozen LLM + head (no LoRA)",
                   "encoder": "Encoder (full fine-tuning)", "tfidf": "TF-IDF + logistic regression"}
APPROACH_ORDER = ["head", "frozen", "instruct", "zeroshot", "encoder", "tfidf"]


def collect(metric_files: list[str | Path]) -> pd.DataFrame:
    """One row per cell from its ``metrics.json`` (keys taken from the path)."""
    rows = []
    for path in metric_files:
        match = CELL_RE.search(str(Path(path).as_posix()))
        if not match:
            raise ValueError(f"not a cell's metrics path: {path}")
        metrics = read_json(path)
        row = {**match.groupdict(), **{k: metrics.get(k) for k in COLUMNS if k in metrics or k not in match.groupdict()}}
        row["f1_micro_ci_low"], row["f1_micro_ci_high"] = metrics.get("f1_micro_ci95", [None, None])
        row["rank"], row["seed"] = int(match["rank"]), int(match["seed"])
        rows.append(row)
    df = pd.DataFrame(rows, columns=COLUMNS)
    integers = ["trainable_params", "total_params", "epochs_run", "best_epoch", "n"]
    df[integers] = df[integers].astype("Int64")  # stay integers where some cells have no value (tfidf epochs)
    tfidf = df[df["approach"] == "tfidf"].groupby("dataset")["f1_micro"].mean()
    df["f1_micro_minus_tfidf"] = df["f1_micro"] - df["dataset"].map(tfidf)
    df["_order"] = df["approach"].map(lambda a: APPROACH_ORDER.index(a) if a in APPROACH_ORDER else len(APPROACH_ORDER))
    df = df.sort_values(["_order", "rank", "model", "dataset", "seed"]).drop(columns="_order")
    return df.reset_index(drop=True)


def human(n) -> str:
    """Parameter counts as the paper prints them: 1.2B, 5.6M, 270M, 8.5K."""
    if n is None or pd.isna(n):
        return ""
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            value = n / div
            return f"{value:.1f}{unit}" if value < 100 else f"{value:.0f}{unit}"
    return str(int(n))


def block_title(approach: str, rank: int) -> str:
    title = APPROACH_TITLES.get(approach, approach)
    return f"{title} (r={rank})" if rank else title


def paper_layout(df: pd.DataFrame) -> pd.DataFrame:
    """Approach block × model rows, parameter columns, one micro-F1 column per dataset (mean ± sd over seeds)."""
    datasets = list(dict.fromkeys(df["dataset"]))
    rows = []
    for (approach, rank, model), group in df.groupby(["approach", "rank", "model"], sort=False):
        row = {"Approach": block_title(approach, rank), "Model": model,
               "Total params": human(group["total_params"].max()),
               "Trainable params": human(group["trainable_params"].max())}
        for dataset in datasets:
            cells = group[group["dataset"] == dataset]
            scores = cells["f1_micro"].dropna()
            if scores.empty:
                row[dataset] = "–"
                continue
            row[dataset] = f"{scores.mean():.3f}" + (f" ± {scores.std(ddof=1):.3f}" if len(scores) > 1 else "")
            delta = cells["f1_micro_minus_tfidf"].mean()
            if approach != "tfidf" and pd.notna(delta):
                row[dataset] += f" ({delta:+.3f})"
        rows.append(row)
    table = pd.DataFrame(rows)
    table.loc[table["Approach"].duplicated(), "Approach"] = ""  # blank repeated block titles, as in the paper
    return table


def uncertainty_layout(df: pd.DataFrame) -> pd.DataFrame:
    """One row per cell: micro-F1 with its bootstrap 95% interval, ECE and Brier score."""
    def fmt(x, digits=3):
        return "" if x is None or pd.isna(x) else f"{x:.{digits}f}"

    return pd.DataFrame({
        "Approach": [block_title(a, r) for a, r in zip(df["approach"], df["rank"])],
        "Model": df["model"], "Dataset": df["dataset"], "Seed": df["seed"],
        "micro-F1 [95% CI]": [f"{fmt(f)} [{fmt(lo)}, {fmt(hi)}]" for f, lo, hi in
                              zip(df["f1_micro"], df["f1_micro_ci_low"], df["f1_micro_ci_high"])],
        "ECE": df["ece"].map(fmt), "Brier": df["brier"].map(fmt)})


def render(metric_files: list[str | Path], out_csv: str | Path, out_md: str | Path) -> pd.DataFrame:
    df = collect(metric_files)
    with atomic_path(out_csv) as tmp:
        df.to_csv(tmp, index=False, float_format="%.4f")
    table = paper_layout(df)
    note = ("Micro-F1 on each dataset's test split (mean ± sd where several seeds ran); in brackets the "
            "distance to the TF-IDF + logistic regression line where it ran. "
            "Parameter counts as peft reports them (4-bit storage corrected).\n\n")
    with atomic_path(out_md) as tmp:
        tmp.write_text("# F1 by approach, model and dataset\n\n" + note + table.to_markdown(index=False) + "\n\n"
                       "## Uncertainty and calibration\n\n"
                       "Percentile bootstrap 95% interval of micro-F1 (1000 resamples of the test texts, seed 0); "
                       "expected calibration error over 15 equal-width bins (single-label: top-class confidence; "
                       "multi-label: every per-label probability) and Brier score, from the cached "
                       "probabilities.\n\n" + uncertainty_layout(df).to_markdown(index=False, disable_numparse=True) + "\n")
    return df


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Render the F1 table from cells' metrics.json files.")
    parser.add_argument("--csv", required=True)
    parser.add_argument("--md", required=True)
    parser.add_argument("metrics", nargs="+")
    args = parser.parse_args(argv)
    print(render(args.metrics, args.csv, args.md).to_string(index=False))


if __name__ == "__main__":
    run_cli(main)
