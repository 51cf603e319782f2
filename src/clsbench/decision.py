"""The decision card of each dataset: what to use, how sure, at what cost (``reports/tables/decision.*``,
``reports/figures/decision_<dataset>.png``).

The recommendation is best.json's (chosen on validation; degenerate configurations excluded). The
card sets it beside the other finalists, the configurations best.json ranks highest, on the test
split: each one's micro-F1 with a seed-aware 95% interval and the probability that it is the best
of the finalists, both from one two-level bootstrap (the seeds of each configuration resampled, and
the test texts, the same draw for every configuration: paired); the difference between the
recommendation and the runner-up with its interval; and the cost: training minutes per cell
(tuning trials added where it was tuned), seconds per 1,000 texts at inference and peak memory.
Flags (degenerate, undertrained: :mod:`clsbench.health`) stand beside each finalist, and the
configurations best.json excluded are listed with the reason.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from . import paired
from .io import atomic_path, read_json, run_cli
from .tables import block_title, collect

FINALISTS = 4
N_BOOT = 2000


def _name(approach: str, rank: int, model: str) -> str:
    return f"{block_title(approach, rank)} · {model}"


def bootstrap(units: dict[str, list[np.ndarray]], n_boot: int = N_BOOT, seed: int = 0) -> dict[str, np.ndarray]:
    """Resampled mean micro-F1 of each configuration (``units``: its cells' per-text TP/FP/FN, same
    texts in the same order): texts drawn once per resample for all, seeds drawn per configuration."""
    text_rng, seed_rng = np.random.default_rng(seed), np.random.default_rng([seed, 1])
    n = len(next(iter(units.values()))[0])
    weights = text_rng.multinomial(n, np.full(n, 1 / n), size=n_boot).astype(float)
    out = {}
    for key, cells in units.items():
        per_cell = np.stack([paired.metric_value("f1_micro", weights @ u) for u in cells], 1)  # n_boot x seeds
        draws = seed_rng.multinomial(len(cells), np.full(len(cells), 1 / len(cells)), size=n_boot)
        out[key] = (per_cell * draws).sum(1) / len(cells)
    return out


def card(df: pd.DataFrame, best: dict, data_root: Path, finalists: int = FINALISTS) -> dict:
    """The card of one dataset as a dict: ``rows`` (one per finalist) and the summary lines."""
    dataset = best["dataset"]
    meta = read_json(data_root / dataset / "labels.json")
    width = len(meta["labels"]) + 1
    cells = df[(df["dataset"] == dataset) & df["mode"].isin(["classifier", "score"])]
    chosen = best["configurations"][:finalists]
    units, rows = {}, []
    for config in chosen:
        key = (config["model"], config["approach"], config["rank"])
        own = cells[(cells["model"] == key[0]) & (cells["approach"] == key[1]) & (cells["rank"] == key[2])]
        loaded = [paired.units(p, meta["labels"], meta["multi_label"], "f1_micro", width) for p in own["_predictions"]]
        units[key] = [u for _, u in loaded]
        # a cell that reused its configuration's chosen trial trained nothing beyond the tuning
        trained = own["train_wall_seconds"].where(own["reused_trial"].isna(), 0.0)
        train_minutes = trained.mean() / 60 if own["train_wall_seconds"].notna().any() else None
        tuning_minutes = own["tuning_seconds"].max() / 60 if own["tuning_seconds"].notna().any() else 0.0
        speed = own["infer_samples_per_second"].mean()
        rows.append({"configuration": _name(key[1], key[2], key[0]), "model": key[0], "approach": key[1],
                     "rank": key[2], "seeds": len(own), "val_f1_micro": config["val_f1_micro_mean"],
                     "test_f1_micro": float(own["f1_micro"].mean()),
                     "train_minutes": None if train_minutes is None else train_minutes + tuning_minutes,
                     "seconds_per_1000_texts": 1000 / speed if speed and speed > 0 else None,
                     "peak_memory_mb": own["peak_memory_mb"].max(),
                     "flags": "; ".join(sorted({f for fs in own["flags"] for f in fs.split("; ") if f})),
                     "recommended": (key[0], key[1], key[2]) == (best["model"], best["approach"], best["rank"])})
    samples = bootstrap(units)
    stacked = np.stack(list(samples.values()), 1)
    winner = stacked.argmax(1)
    for i, (row, draws) in enumerate(zip(rows, samples.values())):
        row["test_ci_low"], row["test_ci_high"] = (float(x) for x in np.quantile(draws, [0.025, 0.975]))
        row["p_best"] = float(np.mean(winner == i))
    out = {"dataset": dataset, "rows": rows, "excluded": best.get("excluded", []),
           "one_seed": all(r["seeds"] == 1 for r in rows)}
    others = [r for r in rows if not r["recommended"]]
    if others:
        top, runner = next(i for i, r in enumerate(rows) if r["recommended"]), rows.index(others[0])
        delta = stacked[:, top] - stacked[:, runner]
        out["versus"] = {"runner_up": others[0]["configuration"], "delta": rows[top]["test_f1_micro"] -
                         others[0]["test_f1_micro"], "ci": [float(x) for x in np.quantile(delta, [0.025, 0.975])],
                         "p_better": float(np.mean(delta > 0))}
    return out


def markdown(decision: dict, best: dict) -> str:
    rows = decision["rows"]
    top = next(r for r in rows if r["recommended"])
    lines = [f"## {decision['dataset']}: use {top['configuration']}", "",
             f"Chosen on validation micro-F1 ({top['val_f1_micro']:.3f}, mean over {top['seeds']} seed"
             f"{'s' if top['seeds'] > 1 else ''}); on test {top['test_f1_micro']:.3f} "
             f"[{top['test_ci_low']:.3f}, {top['test_ci_high']:.3f}], best of the finalists in "
             f"{top['p_best']:.0%} of resamples." + (f" Flags: {top['flags']}." if top["flags"] else "")]
    if "versus" in decision:
        v = decision["versus"]
        lines.append(f"Against the runner-up on validation, {v['runner_up']}: Δ test micro-F1 {v['delta']:+.3f} "
                     f"[{v['ci'][0]:+.3f}, {v['ci'][1]:+.3f}], ahead in {v['p_better']:.0%} of resamples.")
    if decision["one_seed"]:
        lines.append("One seed per configuration: training variance not measured (the intervals resample texts only).")
    table = pd.DataFrame([{
        "": "**recommended**" if r["recommended"] else "", "configuration": r["configuration"], "seeds": r["seeds"],
        "val micro-F1": f"{r['val_f1_micro']:.3f}",
        "test micro-F1 [95% CI]": f"{r['test_f1_micro']:.3f} [{r['test_ci_low']:.3f}, {r['test_ci_high']:.3f}]",
        "P(best)": f"{r['p_best']:.0%}",
        "train min / cell": "" if r["train_minutes"] is None else f"{r['train_minutes']:.1f}",
        "s / 1,000 texts": "" if r["seconds_per_1000_texts"] is None else f"{r['seconds_per_1000_texts']:.1f}",
        "peak MB": "" if pd.isna(r["peak_memory_mb"]) else f"{r['peak_memory_mb']:.0f}",
        "flags": r["flags"]} for r in rows])
    lines += ["", table.to_markdown(index=False, disable_numparse=True), ""]
    for config in decision["excluded"]:
        reasons = "; ".join(f"s{c['seed']}: " + ", ".join(f["flag"] for f in c["flags"]) for c in config["cells"])
        lines.append(f"- excluded: {_name(config['approach'], config['rank'], config['model'])} ({reasons})")
    return "\n".join(lines) + "\n"


def figure(decision: dict, out_dir: Path) -> Path:
    """Test micro-F1 of the finalists with their seed-aware intervals; the recommendation marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plots import COLORS, save

    rows = decision["rows"][::-1]
    fig, ax = plt.subplots(figsize=(7.5, 0.6 + 0.55 * len(rows)))
    y = np.arange(len(rows))
    f1 = np.array([r["test_f1_micro"] for r in rows])
    err = np.array([[r["test_f1_micro"] - r["test_ci_low"], r["test_ci_high"] - r["test_f1_micro"]] for r in rows]).T
    ax.barh(y, f1, xerr=err, color=[COLORS.get(r["approach"], "#999999") for r in rows], capsize=3,
            edgecolor=["black" if r["recommended"] else "none" for r in rows], linewidth=2)
    ax.set_yticks(y, [("★ " if r["recommended"] else "") + r["configuration"] + f"  (P(best) {r['p_best']:.0%})"
                      for r in rows])
    ax.set_xlabel("test micro-F1 (95% interval: seeds and texts resampled)")
    ax.set_xlim(0, 1)
    ax.set_title(f"{decision['dataset']}: ★ recommended (chosen on validation)")
    return save(fig, out_dir, f"decision_{decision['dataset']}")[0]


def no_recommendation_figure(dataset: str, problem: str, out_dir: Path) -> Path:
    """The figure of a dataset where nothing can be recommended: the reason, in words."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plots import save

    fig, ax = plt.subplots(figsize=(7.5, 1.6))
    ax.axis("off")
    ax.text(0.0, 0.5, f"{dataset}: no recommendation\n" + textwrap.fill(problem, 90), va="center", fontsize=10)
    return save(fig, out_dir, f"decision_{dataset}")[0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Decision cards: what to use on each dataset, how sure, at what cost.")
    parser.add_argument("--best", nargs="+", required=True, help="results/<dataset>/best.json of each dataset")
    parser.add_argument("--out-dir", required=True, help="where decision.md / decision.csv go")
    parser.add_argument("--figures", required=True, help="where decision_<dataset>.png goes")
    parser.add_argument("--data-root", default="results/data")
    parser.add_argument("metrics", nargs="+", help="the cells' metrics.json files")
    args = parser.parse_args(argv)
    df = collect(args.metrics)
    text, rows = ["# What to use: the decision for each dataset", "",
                  "The recommendation is chosen on validation (results/<dataset>/best.json); test figures, the "
                  "probability of being the best finalist and the difference to the runner-up come from a "
                  f"two-level bootstrap ({N_BOOT} resamples of each configuration's seeds and of the test texts). "
                  "Costs are per cell on the machine that ran it.", ""], []
    for path in args.best:
        best = read_json(path)
        if not best.get("cell"):
            text += [f"## {best['dataset']}: no recommendation", "", best.get("problem", ""), ""]
            text += [f"- excluded: {_name(c['approach'], c['rank'], c['model'])} ("
                     + "; ".join(f"s{x['seed']}: " + ", ".join(f["flag"] for f in x["flags"]) for x in c["cells"]) + ")"
                     for c in best.get("excluded", [])] + [""]
            no_recommendation_figure(best["dataset"], best.get("problem", ""), Path(args.figures))
            continue
        decision = card(df, best, Path(args.data_root))
        text.append(markdown(decision, best))
        figure(decision, Path(args.figures))
        rows += [{"dataset": decision["dataset"], **r} for r in decision["rows"]]
    with atomic_path(Path(args.out_dir) / "decision.md") as tmp:
        tmp.write_text("\n".join(text))
    with atomic_path(Path(args.out_dir) / "decision.csv") as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False, float_format="%.4f")
    print("\n".join(text))


if __name__ == "__main__":
    run_cli(main)
