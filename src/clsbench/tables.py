"""Tables from the cells' cached outputs.

f1.{csv,md,tex}              one CSV row per cell; Markdown/LaTeX laid out like the paper's Table 2
                             (approach/rank blocks × model rows, one micro-F1 column per dataset)
throughput.{csv,md,tex}      Table 3 / Appendix D: train and inference samples/s per cell
dataset_stats.{csv,md,tex}   Appendix A: labels, split sizes, multi-label share, lengths
calibration.{csv,md,tex}     micro-F1 with bootstrap 95% CI, ECE and Brier score per cell

The paper's published figure is printed beside ours where model (by slug), approach, rank and
dataset (a dataset's ``paper_dataset``) match; its numbers ship in ``reference/paper_results.csv``.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import pandas as pd

from . import approaches, health, layout, tuning
from .io import atomic_path, read_json, run_cli

REFERENCE = Path(__file__).parent / "reference" / "paper_results.csv"

COLUMNS = ["dataset", "model", "approach", "rank", "seed", "mode", "f1_micro", "f1_macro", "trainable_params", "total_params",
           "epochs_run", "best_epoch", "train_samples_per_second", "infer_samples_per_second", "n",
           "f1_micro_ci_low", "f1_micro_ci_high", "ece", "brier", "invalid_output_rate", "accuracy",
           "effective_batch", "text_tokens_mean", "text_truncated_share", "train_wall_seconds"]
# throughput figures beyond samples/s, shown in the throughput table where the cells' info files have
# them (clsbench.throughput records)
THROUGHPUT_EXTRA = ["train_tokens_per_second", "infer_tokens_per_second",
                    "peak_memory_mb", "train_peak_memory_mb", "infer_peak_memory_mb", "train_padding_fraction",
                    "infer_padding_fraction", "train_mfu", "infer_mfu"]
THROUGHPUT_CONTEXT = ["device", "dtype"]  # what was measured: the throughput table's last columns
APPROACH_TITLES = {a.name: a.title for a in approaches.REGISTRY.values()}
APPROACH_ORDER = list(approaches.NAMES)


def collect(metric_files: list[str | Path]) -> pd.DataFrame:
    """One row per cell and inference mode from its ``metrics.json`` / ``metrics_generate.json``
    (keys taken from the path); ``mode`` is score / generate for instruct and zero-shot cells,
    ``classifier`` for the others."""
    rows = []
    for path in metric_files:
        cell, mode = layout.metrics_of(path)
        keys = vars(cell)
        metrics = read_json(path)
        row = {**keys, **{k: metrics.get(k) for k in COLUMNS if k not in keys}}
        row["f1_micro_ci_low"], row["f1_micro_ci_high"] = metrics.get("f1_micro_ci95", [None, None])
        row["mode"] = mode or (approaches.REGISTRY[cell.approach].modes[0]
                               if cell.approach in approaches.REGISTRY else "classifier")
        row.update({k: metrics.get(k) for k in THROUGHPUT_EXTRA + THROUGHPUT_CONTEXT})
        row["_flags"] = metrics["flags"] if "flags" in metrics else health.training_flags(metrics)  # cells made before
        tuned = Path(path).parents[1] / tuning.TUNED_FILE  # its configuration's tuning, if it was tuned
        if tuned.exists():
            record = read_json(tuned)
            row["tuned"], row["tuning_seconds"] = tuning.describe(record), record["tuning_seconds"]
        row["reused_trial"] = metrics.get("reused_trial")  # its training is one of its configuration's trials
        row["_dir"] = str(Path(path).parent)
        row["_predictions"] = str(Path(path).parent / layout.mode_file("predictions", mode, "parquet"))
        rows.append(row)
    df = pd.DataFrame(rows, columns=[*COLUMNS, *THROUGHPUT_EXTRA, *THROUGHPUT_CONTEXT, "tuned", "tuning_seconds", "reused_trial", "_flags",
                                     "_dir", "_predictions"])
    integers = ["trainable_params", "total_params", "epochs_run", "best_epoch", "n"]
    df[integers] = df[integers].astype("Int64")  # stay integers where some cells have no value (tfidf epochs)
    baseline = df[df["approach"] == approaches.BASELINE].groupby("dataset")["f1_micro"].mean()
    df["f1_micro_minus_tfidf"] = df["f1_micro"] - df["dataset"].map(baseline)
    df["_flags"] = [flags + [f for f in [health.tfidf_flag(f1, baseline.get(d))] if f]
                    for flags, f1, d in zip(df["_flags"], df["f1_micro"], df["dataset"])]
    df["flags"] = df["_flags"].map(health.names)
    df["degenerate"] = df["_flags"].map(health.is_degenerate)
    df["undertrained"] = df["_flags"].map(lambda flags: any(f["flag"] == "undertrained" for f in flags))
    df["_order"] = df["approach"].map(lambda a: APPROACH_ORDER.index(a) if a in APPROACH_ORDER else len(APPROACH_ORDER))
    df = df.sort_values(["_order", "rank", "mode", "model", "dataset", "seed"]).drop(columns="_order")
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


def block_title(approach: str, rank: int, mode: str = "classifier") -> str:
    title = APPROACH_TITLES.get(approach, approach)
    title = f"{title} (r={rank})" if rank else title
    return f"{title}, {mode}" if mode not in ("classifier", None) else title


def paper_layout(df: pd.DataFrame) -> pd.DataFrame:
    """Approach block × model rows, parameter columns, one micro-F1 column per dataset (mean ± sd over seeds)."""
    datasets = list(dict.fromkeys(df["dataset"]))
    rows = []
    for (approach, rank, mode, model), group in df.groupby(["approach", "rank", "mode", "model"], sort=False):
        row = {"Approach": block_title(approach, rank, mode), "Model": model,
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
            if approach != approaches.BASELINE and pd.notna(delta):
                row[dataset] += f" ({delta:+.3f})"
            row[dataset] += flag_marks(cells)
        rows.append(row)
    table = pd.DataFrame(rows)
    table.loc[table["Approach"].duplicated(), "Approach"] = ""  # blank repeated block titles, as in the paper
    return table


FLAG_MARKS = {"degenerate": "†", "undertrained": "*"}
FLAG_NOTE = ("† degenerate: a seed of the cell predicts no label for most texts, one answer for nearly all, no "
             "better than a constant answer, or more than 0.10 below TF-IDF (never chosen by best.json); "
             "* undertrained: a seed's best validation epoch was its last (still improving when its epochs ran "
             "out). The 'Flags' column below names them per cell.")


def undertrained_note(df: pd.DataFrame) -> str:
    """Why cells are undertrained, where some are: how many of the epoch-trained ones, after how many epochs."""
    trained = df[df["epochs_run"].fillna(0) > 0].drop_duplicates("_dir") if "_dir" in df else df.iloc[:0]
    if "undertrained" not in trained or not trained["undertrained"].any():
        return ""
    under = trained[trained["undertrained"]]
    epochs = ", ".join(str(int(e)) for e in sorted(under["epochs_run"].unique()))
    return (f" Undertrained here: {len(under)} of {len(trained)} cells trained over epochs, each still improving at "
            f"its last epoch ({epochs}): their epoch budget (max_epochs), not early stopping, ended training, so "
            "their ranking is one of learning speed within that budget; a grid with a larger max_epochs settles it.")


def flag_marks(cells: pd.DataFrame) -> str:
    """`†` where a seed of the cells is degenerate, `*` where one is undertrained (:mod:`clsbench.health`)."""
    marks = "".join(mark for column, mark in FLAG_MARKS.items() if column in cells and cells[column].any())
    return f" {marks}" if marks else ""


def uncertainty_layout(df: pd.DataFrame) -> pd.DataFrame:
    """One row per cell: micro-F1 with its bootstrap 95% interval, ECE and Brier score."""
    def fmt(x, digits=3):
        return "" if x is None or pd.isna(x) else f"{x:.{digits}f}"

    return pd.DataFrame({
        "Approach": [block_title(a, r, m) for a, r, m in zip(df["approach"], df["rank"], df["mode"])],
        "Model": df["model"], "Dataset": df["dataset"], "Seed": df["seed"],
        "micro-F1 [95% CI]": [f"{fmt(f)} [{fmt(lo)}, {fmt(hi)}]" for f, lo, hi in
                              zip(df["f1_micro"], df["f1_micro_ci_low"], df["f1_micro_ci_high"])],
        "macro-F1": df["f1_macro"].map(fmt),
        "ECE": df["ece"].map(fmt), "Brier": df["brier"].map(fmt),
        "Invalid outputs": df["invalid_output_rate"].map(fmt),
        "Epochs (best)": [_epochs(e, b) for e, b in zip(df["epochs_run"], df["best_epoch"])],
        "Batch": df["effective_batch"].map(lambda x: "" if x is None or pd.isna(x) else str(int(x))),
        "Text tokens seen": df["text_tokens_mean"].map(lambda x: fmt(x, 1)),
        "Cut by limit": df["text_truncated_share"].map(lambda x: "" if x is None or pd.isna(x) else f"{x:.1%}"),
        "Flags": df["flags"] if "flags" in df else "",
        "Tuned on validation": df["tuned"].fillna("") if "tuned" in df else ""})


def _epochs(run, best) -> str:
    if run is None or pd.isna(run) or not run:
        return ""
    return f"{int(run)}" + ("" if best is None or pd.isna(best) or not best else f" ({int(best)})")


def render(metric_files: list[str | Path], out_csv: str | Path, out_md: str | Path,
           paper_datasets: dict[str, str] | None = None) -> pd.DataFrame:
    df = collect(metric_files)
    df["paper_f1_micro"] = paper_figures(df, "f1_micro", paper_datasets or {})
    with atomic_path(out_csv) as tmp:
        df.drop(columns=["_flags", "_dir", "_predictions", *THROUGHPUT_EXTRA, *THROUGHPUT_CONTEXT]).to_csv(tmp, index=False, float_format="%.4f")
    table = paper_layout(df)
    note = ("Micro-F1 on each dataset's test split (mean ± sd where several seeds ran); in brackets the "
            "distance to the TF-IDF + logistic regression line where it ran. "
            "Parameter counts as peft reports them (4-bit storage corrected). Instruction-tuned and zero-shot "
            "cells appear twice: `score` ranks the label answers by the model's probabilities (no invalid "
            "output possible), `generate` decodes freely and parses the text (unparseable answers count as "
            "wrong; their share is the 'Invalid outputs' column below). " + FLAG_NOTE + undertrained_note(df)
            + "\n\n")
    with atomic_path(out_md) as tmp:
        tmp.write_text("# F1 by approach, model and dataset\n\n" + note + table.to_markdown(index=False) + "\n\n"
                       "## Uncertainty and calibration\n\n"
                       "Percentile bootstrap 95% interval of micro-F1 (1000 resamples of the test texts, seed 0); "
                       "expected calibration error over 15 equal-width bins (single-label: top-class confidence; "
                       "multi-label: every per-label probability) and Brier score, from the cached "
                       "probabilities. Epochs trained (best epoch restored, by validation micro-F1), effective "
                       "training batch, mean test-text tokens the cell read (TF-IDF: its word tokens, whole texts), "
                       "and the share of test texts its length limit cut beyond the dataset's own cut: an "
                       "approach that reads less of the text than another is marked here. 'Tuned on validation': "
                       "the values its configuration's tuning trials chose (f1.csv's tuning_seconds: the trials' "
                       "training time; 'chosen after K epoch(s)': the trials were cut there and the first seed's "
                       "cell continued the chosen one).\n\n"
                       + uncertainty_layout(df).to_markdown(index=False, disable_numparse=True) + "\n")
    return df


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", str(name).lower()).strip("-")


def paper_figures(df: pd.DataFrame, metric: str, paper_datasets: dict[str, str]) -> pd.Series:
    """The paper's value of ``metric`` for each row of ``df`` (NaN where the paper has no such cell)."""
    ref = pd.read_csv(REFERENCE)
    ref = ref[ref["metric"] == metric]
    key = zip(ref["model"].map(slug), ref["approach"], ref["rank"].fillna(0).astype(int), ref["dataset"])
    lookup = dict(zip(key, ref["value"]))
    return pd.Series([lookup.get((m, a, int(r), paper_datasets.get(d))) for m, a, r, d in
                      zip(df["model"], df["approach"], df["rank"], df["dataset"])], index=df.index, dtype=float)


def write_table(table: pd.DataFrame, out_dir: Path, stem: str, title: str, note: str = "") -> None:
    """CSV + Markdown + LaTeX (booktabs rules) of one table, each written atomically."""
    with atomic_path(out_dir / f"{stem}.csv") as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    with atomic_path(out_dir / f"{stem}.md") as tmp:
        tmp.write_text(f"# {title}\n\n{note}\n\n" + table.astype(object).where(table.notna(), None).to_markdown(  # NaN -> blank cell
            index=False, floatfmt=".3f", missingval="") + "\n")
    with atomic_path(out_dir / f"{stem}.tex") as tmp:
        tmp.write_text(table.style.hide(axis="index").format(precision=3, na_rep="")
                       .to_latex(hrules=True, caption=title))


def throughput_table(df: pd.DataFrame, paper_datasets: dict[str, str]) -> pd.DataFrame:
    out = df[["dataset", "model", "approach", "rank", "seed", "mode", "train_samples_per_second",
              "infer_samples_per_second"]].copy()
    out["infer_over_train"] = out["infer_samples_per_second"] / out["train_samples_per_second"]
    out["paper_train_samples_per_second"] = paper_figures(df, "train_samples_per_s", paper_datasets)
    out["paper_infer_samples_per_second"] = paper_figures(df, "infer_samples_per_s", paper_datasets)
    for stage in ("train", "infer"):
        out[f"{stage}_over_paper"] = out[f"{stage}_samples_per_second"] / out[f"paper_{stage}_samples_per_second"]
    extra = {k: pd.to_numeric(df[k], errors="coerce") for k in THROUGHPUT_EXTRA}
    trained = out["train_samples_per_second"].notna()  # its train_info.json recorded the peak memory first
    extra["train_peak_memory_mb"] = extra["train_peak_memory_mb"].fillna(extra.pop("peak_memory_mb").where(trained))
    for name, values in extra.items():  # only the figures some cell has
        if values.notna().any():
            out[name] = values
    for name in THROUGHPUT_CONTEXT:
        if name in df and df[name].notna().any():
            out[name] = df[name]
    return out


def dataset_stats_table(stats_files: list[str | Path], tokenizers: dict[str, str] | None = None) -> pd.DataFrame:
    """Appendix A: one row per dataset; ``tokenizers`` (model key -> model.json) add the mean
    untruncated length of the training texts in that model's tokens."""
    from .models import load_tokenizer

    toks = {key: load_tokenizer(read_json(path)["path"]) for key, path in (tokenizers or {}).items()}
    rows = []
    for path in stats_files:
        stats = read_json(path)
        train_texts = list(pd.read_parquet(Path(path).parent / "train.parquet")["text"])
        tokens = {f"mean_tokens_{key}": float(np.mean([len(ids) for ids in tok(train_texts)["input_ids"]]))
                  for key, tok in toks.items()}
        rows.append({"dataset": Path(path).parent.name, "labels": stats["labels"], "multi_label": stats["multi_label"],
                     "train": stats["train"]["n"], "val": stats["val"]["n"], "test": stats["test"]["n"],
                     "multi_label_share": stats["train"]["multi_label_share"],
                     "mean_words": stats["train"]["mean_words"],
                     **tokens, "duplicates_removed": sum(stats["duplicates_removed"].values())})
    return pd.DataFrame(rows)


MODEL_BOUND = set(approaches.names(model_bound=True))  # compared with reference cells of the same model only


PAIRED_COLUMNS = ["dataset", "seeds", "a", "b", "f1_micro_a", "f1_micro_b", "delta", "per_seed", "delta_ci_low",
                  "delta_ci_high", "test", "p_value", "training_variance"]


def paired_table(df: pd.DataFrame, data_root: str | Path = "results/data") -> pd.DataFrame:
    """Each head configuration against every other configuration on the same dataset (same model for
    the approaches that use the LLM), over the seeds both ran: the mean micro-F1 difference, the
    per-seed differences and the two-level bootstrap's interval and p-value (seeds, then texts: training
    randomness included). With one seed, the p-value is the per-text test of :func:`metrics.compare`
    (exact McNemar single-label, paired bootstrap multi-label) and the row says the training variance
    is not measured."""
    from .metrics import compare
    from .paired import paired_difference

    reference = approaches.REFERENCE
    groups: dict[tuple, list] = {}
    for _, a in df[df["approach"] == reference].iterrows():
        others = df[(df["dataset"] == a["dataset"]) & (df["seed"] == a["seed"]) & (df["approach"] != reference)]
        others = others[~others["approach"].isin(MODEL_BOUND) | (others["model"] == a["model"])]
        for _, b in others.iterrows():
            key = (a["dataset"], f"{block_title(reference, a['rank'])} {a['model']}",
                   f"{block_title(b['approach'], b['rank'], b['mode'])} {b['model']}")
            groups.setdefault(key, []).append((a, b))
    rows = []
    for (dataset, title_a, title_b), pairs in groups.items():
        result = paired_difference(pairs, Path(data_root))
        if result["seeds"] == 1:
            one = compare(pairs[0][0]["_predictions"], pairs[0][1]["_predictions"],
                          Path(data_root) / dataset / "labels.json")
            test, p_value = one["test"], one["p_value"]
        else:
            test, p_value = "two-level bootstrap (seeds, texts)", result["p_value"]
        rows.append({"dataset": dataset, "seeds": result["seeds"], "a": title_a, "b": title_b,
                     "f1_micro_a": float(np.mean([a["f1_micro"] for a, _ in pairs])),
                     "f1_micro_b": float(np.mean([b["f1_micro"] for _, b in pairs])), "delta": result["delta"],
                     "per_seed": result["per_seed"], "delta_ci_low": result["ci_low"],
                     "delta_ci_high": result["ci_high"], "test": test, "p_value": p_value,
                     "training_variance": result["training_variance"]})
    return pd.DataFrame(rows, columns=PAIRED_COLUMNS)


def per_label_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per-label F1 of every multi-label cell (mean and sd over seeds), rarest label first: where the
    long tail of a label set is won or lost, which micro-F1 hides."""
    rows = []
    for _, cell in df.iterrows():
        metrics = read_json(Path(cell["_dir"]) / layout.mode_file("metrics", cell["mode"]))
        if "subset_accuracy" not in metrics:  # single-label
            continue
        for label, figures in metrics["per_class"].items():
            rows.append({"dataset": cell["dataset"], "label": label, "support": figures["support"],
                         "approach": cell["approach"], "rank": cell["rank"], "model": cell["model"],
                         "mode": cell["mode"], "seed": cell["seed"], "f1": figures["f1"]})
    columns = ["dataset", "label", "support", "approach", "rank", "model", "mode", "seeds", "f1_mean", "f1_sd"]
    if not rows:
        return pd.DataFrame(columns=columns)
    long = pd.DataFrame(rows)
    keys = ["dataset", "label", "support", "approach", "rank", "model", "mode"]
    out = long.groupby(keys, sort=False).agg(seeds=("seed", "size"), f1_mean=("f1", "mean"),
                                             f1_sd=("f1", "std")).reset_index()
    return out.sort_values(["dataset", "support", "label"], kind="stable")[columns].reset_index(drop=True)


def render_all(metric_files: list[str | Path], stats_files: list[str | Path], out_dir: str | Path,
               paper_datasets: dict[str, str], tokenizers: dict[str, str] | None = None) -> None:
    """Every table: F1 (CSV, Markdown, LaTeX), throughput, dataset statistics, calibration."""
    out_dir = Path(out_dir)
    df = render(metric_files, out_dir / "f1.csv", out_dir / "f1.md", paper_datasets)
    with atomic_path(out_dir / "f1.tex") as tmp:
        tmp.write_text(paper_layout(df).style.hide(axis="index").to_latex(
            hrules=True, caption="Micro-F1 by approach, model and dataset (test split)"))
    write_table(throughput_table(df, paper_datasets), out_dir, "throughput", "Throughput (samples per second)",
                "Training samples/s exclude per-epoch evaluation; inference samples/s exclude model loading "
                "and one warm-up batch. The paper's figures (one NVIDIA L4) are beside ours where the cell matches.")
    write_table(dataset_stats_table(stats_files, tokenizers), out_dir, "dataset_stats", "Datasets (Appendix A)",
                "Split sizes after de-duplication and caps; multi-label share and mean length of the training "
                "texts in words and, untruncated, in each model's tokens.")
    write_table(paired_table(df), out_dir, "paired_tests", "Paired tests: head against the other approaches",
                "Same test texts, seeds matched. delta = head minus the other configuration, the mean over seeds "
                "(per_seed: each seed's); its 95% interval resamples the seeds, then the texts (2000 draws), so "
                "training randomness widens it. p: that bootstrap with several seeds; with one seed the per-text "
                "test (exact McNemar single-label, paired bootstrap multi-label), training variance not measured.")
    write_table(per_label_table(df), out_dir, "per_label", "Per-label F1 (multi-label datasets)",
                "F1 of each label on the test split (support: its test examples), mean and sd over seeds, "
                "rarest label first. Empty where the grid has no multi-label dataset.")
    write_table(df[["dataset", "model", "approach", "rank", "seed", "mode", "f1_micro", "f1_micro_ci_low",
                    "f1_micro_ci_high", "ece", "brier"]], out_dir, "calibration", "Calibration and uncertainty",
                "Bootstrap 95% interval of micro-F1 (1000 resamples, seed 0); ECE over 15 equal-width bins; Brier score.")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Render the tables from cells' metrics.json files.")
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--stats", nargs="*", default=[], help="the datasets' stats.json files")
    parser.add_argument("--paper-datasets", nargs="*", default=[], help="ours=PAPER, e.g. clv=CLV")
    parser.add_argument("--tokenizers", nargs="*", default=[], help="model=path/to/model.json: lengths in tokens")
    parser.add_argument("metrics", nargs="+")
    args = parser.parse_args(argv)
    render_all(args.metrics, args.stats, args.out_dir, dict(p.split("=", 1) for p in args.paper_datasets),
               dict(p.split("=", 1) for p in args.tokenizers))
    print(f"tables written to {args.out_dir}")


if __name__ == "__main__":
    run_cli(main)
