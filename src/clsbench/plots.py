"""Figures from cached cell outputs (never retrains): PNG + PDF, one colour per approach.

bubble_{dataset}       micro-F1 against trainable parameters (log x), bubble area ∝ total
                       parameters, TF-IDF as a horizontal reference line (the paper's Figures 1-2)
f1_bars                grouped bars of micro-F1 per model and approach, one panel per dataset (Figures 3-4)
reliability_{dataset}  reliability diagram per approach (15 equal-width bins)
training_{dataset}     training loss and validation micro-F1 per epoch of every trained cell
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from . import approaches  # noqa: E402
from .io import atomic_path, read_json, run_cli  # noqa: E402
from .metrics import forecasts, indicator, reliability_bins  # noqa: E402
from .tables import block_title, collect  # noqa: E402

MIN_BIN = 5  # reliability bins with fewer forecasts are too noisy to draw
COLORS = {a.name: a.colour for a in approaches.REGISTRY.values()}


def save(fig, out_dir: Path, stem: str) -> list[Path]:
    paths = []
    for ext in ("png", "pdf"):
        with atomic_path(out_dir / f"{stem}.{ext}") as tmp:
            fig.savefig(tmp, format=ext, dpi=150, bbox_inches="tight")
        paths.append(out_dir / f"{stem}.{ext}")
    plt.close(fig)
    return paths


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds per (dataset, approach, rank, model)."""
    return (df.groupby(["dataset", "approach", "rank", "model"], sort=False)
              .agg(f1=("f1_micro", "mean"), sd=("f1_micro", "std"), trainable=("trainable_params", "max"),
                   total=("total_params", "max")).reset_index())


def bubble(df: pd.DataFrame, dataset: str, out_dir: Path) -> list[Path]:
    cells = summarise(df[df["dataset"] == dataset])
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    baseline = cells[cells["approach"] == approaches.BASELINE]
    if len(baseline):
        ax.axhline(baseline["f1"].iloc[0], color=COLORS[approaches.BASELINE], ls="--", lw=1.2,
                   label=f"{block_title(approaches.BASELINE, 0)} ({baseline['f1'].iloc[0]:.3f})")
    points = cells[cells["approach"] != approaches.BASELINE].sort_values("trainable").reset_index(drop=True)
    biggest = points["total"].max() if len(points) else 1
    for approach, group in points.groupby("approach", sort=False):
        ax.scatter(group["trainable"], group["f1"], s=60 + 1400 * group["total"] / biggest, alpha=0.55,
                   color=COLORS.get(approach, "#d62728"), edgecolors="black", linewidths=0.6,
                   label=block_title(approach, 0))
    for i, row in points.iterrows():  # alternate label offsets so neighbouring points stay readable
        tag = f"{row['model']}" + (f" r{row['rank']}" if row["rank"] else "")
        ax.annotate(tag, (row["trainable"], row["f1"]), xytext=(0, 14 if i % 2 == 0 else -18),
                    textcoords="offset points", fontsize=8, ha="center")
    ax.set_xscale("log")
    if len(points):
        ax.set_xlim(points["trainable"].min() / 4, points["trainable"].max() * 4)
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel("micro-F1 (test)")
    ax.set_title(f"{dataset}: micro-F1 against trainable parameters (bubble area ∝ total parameters)", fontsize=10)
    low = min([cells["f1"].min()] + [0.5]) if len(cells) else 0.5
    ax.set_ylim(max(0.0, low - 0.05), 1.0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right", markerscale=0.4)
    return save(fig, out_dir, f"bubble_{dataset}")


def f1_bars(df: pd.DataFrame, out_dir: Path) -> list[Path]:
    cells = summarise(df)
    datasets = list(dict.fromkeys(cells["dataset"]))
    cells["variant"] = [block_title(a, r) for a, r in zip(cells["approach"], cells["rank"])]
    variants = list(dict.fromkeys(cells["variant"]))
    models = list(dict.fromkeys(cells["model"]))
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4.2), squeeze=False, sharey=True)
    colour = {v: COLORS.get(a, "#d62728") for v, a in zip(cells["variant"], cells["approach"])}
    for ax, dataset in zip(axes[0], datasets):
        sub = cells[cells["dataset"] == dataset]
        for m, model in enumerate(models):  # only the variants this model has, centred on its tick
            mine = sub[sub["model"] == model]
            width = min(0.8 / max(1, len(mine)), 0.27)
            left = m - width * len(mine) / 2
            for j, (_, row) in enumerate(mine.iterrows()):
                ax.bar(left + width * (j + 0.5), row["f1"], width * 0.95, yerr=row["sd"], color=colour[row["variant"]],
                       hatch="//" if "r=16" in row["variant"] else None, edgecolor="black", linewidth=0.5)
                top = row["f1"] + (row["sd"] if pd.notna(row["sd"]) else 0) + 0.01  # above the error bar
                ax.text(left + width * (j + 0.5), top, f"{row['f1']:.2f}", ha="center", va="bottom", rotation=90,
                        fontsize=7)
        ax.set_xticks(np.arange(len(models)), models, rotation=20, ha="right", fontsize=8)
        ax.set_title(dataset, fontsize=10)
        ax.set_ylim(0, 1.12)
        ax.grid(axis="y", alpha=0.3)
    handles = [plt.Rectangle((0, 0), 1, 1, facecolor=colour[v], edgecolor="black", linewidth=0.5,
                             hatch="//" if "r=16" in v else None) for v in variants]
    fig.legend(handles, variants, loc="lower center", ncol=min(len(variants), 4), fontsize=8, bbox_to_anchor=(0.5, -0.16))
    axes[0][0].set_ylabel("micro-F1 (test)")
    return save(fig, out_dir, "f1_bars")


def reliability(cell_dirs: list[Path], dataset: str, labels_json: Path, out_dir: Path) -> list[Path]:
    meta = read_json(labels_json)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="black", lw=0.8, ls=":", label="perfect calibration")
    for cell in cell_dirs:
        pred = pd.read_parquet(cell / "predictions.parquet")
        if "probs" not in pred.columns or pred["probs"].isna().any():
            continue
        gold = indicator(list(map(list, pred["gold"])), meta["labels"])
        bins = reliability_bins(*forecasts(np.stack(pred["probs"]).astype(float), gold, meta["multi_label"]))
        bins = bins[bins["count"] >= MIN_BIN]
        approach, rank, model = cell.parts[-3], int(cell.parts[-2][1:]), cell.parts[-4]
        ece = read_json(cell / "metrics.json").get("ece")
        color = COLORS.get(approach, "#d62728")
        ax.scatter(bins["conf"], bins["freq"], s=8 + 200 * bins["count"] / bins["count"].sum(), color=color,
                   edgecolors="black", linewidths=0.4, zorder=3)
        ax.plot(bins["conf"], bins["freq"], color=color, lw=1, ls="-" if rank in (0, 8) else "--",
                label=f"{block_title(approach, rank)} {model}" + (f" (ECE {ece:.3f})" if ece is not None else ""))
    ax.set_xlabel("predicted probability" + (" (per label)" if meta["multi_label"] else " (top class)"))
    ax.set_ylabel("observed frequency" if meta["multi_label"] else "accuracy")
    ax.set_title(f"{dataset}: reliability (15 bins; bins with ≥{MIN_BIN} forecasts, area ∝ count)", fontsize=9)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=1)
    return save(fig, out_dir, f"reliability_{dataset}")


def training_curves(cell_dirs: list[Path], dataset: str, out_dir: Path) -> list[Path]:
    fig, (loss_ax, f1_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    for cell in cell_dirs:
        log_path = cell / "train_log.jsonl"
        if not log_path.exists():
            continue
        log = pd.DataFrame([json.loads(line) for line in log_path.read_text().splitlines()])
        approach, rank, model = cell.parts[-3], int(cell.parts[-2][1:]), cell.parts[-4]
        style = {"color": COLORS.get(approach, "#d62728"), "ls": "-" if rank in (0, 8) else "--",
                 "label": f"{block_title(approach, rank)} {model}"}
        if "loss" in log:
            steps = log.dropna(subset=["loss"])
            loss_ax.plot(steps["epoch"], steps["loss"], **style)
        if "eval_f1_micro" in log:
            evals = log.dropna(subset=["eval_f1_micro"])
            f1_ax.plot(evals["epoch"], evals["eval_f1_micro"], marker="o", **style)
    loss_ax.set(xlabel="epoch", ylabel="training loss", title=f"{dataset}: training loss")
    f1_ax.set(xlabel="epoch", ylabel="validation micro-F1", title=f"{dataset}: validation micro-F1", ylim=(0, 1))
    for ax in (loss_ax, f1_ax):
        ax.grid(alpha=0.3)
    f1_ax.legend(fontsize=7, loc="lower right")
    return save(fig, out_dir, f"training_{dataset}")


def render(metric_files: list[str], out_dir: str | Path, data_root: str | Path = "results/data") -> list[Path]:
    """Every figure for the cells whose ``metrics.json`` are given."""
    out_dir = Path(out_dir)
    df = collect(metric_files)
    df = df[df["mode"] != "generate"]  # instruct / zero-shot cells enter with their score mode (probabilities)
    cells = list(dict.fromkeys(Path(f).parent for f in metric_files))
    paths = f1_bars(df, out_dir)
    for dataset in dict.fromkeys(df["dataset"]):
        mine = [c for c in cells if c.parts[-5] == dataset]
        paths += bubble(df, dataset, out_dir)
        paths += reliability(mine, dataset, Path(data_root) / dataset / "labels.json", out_dir)
        paths += training_curves(mine, dataset, out_dir)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Render the figures from cells' cached outputs.")
    parser.add_argument("--out", required=True)
    parser.add_argument("--data-root", default="results/data")
    parser.add_argument("metrics", nargs="+")
    args = parser.parse_args(argv)
    for path in render(args.metrics, args.out, args.data_root):
        print(path)


if __name__ == "__main__":
    run_cli(main)
