"""The claims of a run judged at the level of its seeds, from its committed per-cell table (f1.csv):
for runs whose cached predictions are gone, so the claims table's two-level bootstrap cannot be
recomputed, this gives the training-variance part that a text-only bootstrap leaves out.

    python scripts/claims_by_seed.py reports/claims/tables/f1.csv --claims reports/claims/tables/claims.csv \
        --out reports/claims/tables/claims_by_seed.md

Each claim's pairs of cells are clsbench.claims' (same dataset, seed and, where the claim says so,
model); per pair the difference of the cells' test figures (micro-F1 of A minus B; ECE of B minus
A); across pairs their mean, a Student-t 95% interval (pairs = independent training runs), a
two-sided one-sample t-test against the claim's margin, Holm-adjusted over the claims, and the
verdict by clsbench.claims.verdict. Beside it, the run's own claims table (--claims) as it was.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from clsbench import claims


def by_seed(f1: pd.DataFrame, multi: dict[str, bool]) -> pd.DataFrame:
    rows = []
    for claim in claims.CLAIMS:
        cell_pairs = claims.pairs(f1, claim, multi)
        metric = "ece" if claim.metric == "ece" else "f1_micro"
        sign = -1.0 if claim.metric == "ece" else 1.0
        diffs = np.array([sign * (a[metric] - b[metric]) for a, b in cell_pairs], dtype=float)
        per_seed = " | ".join(f"{a['dataset']} {a['model']} s{a['seed']} {d:+.3f}" for (a, _), d in zip(cell_pairs, diffs))
        row = {"claim": claim.key, "statement": claim.text, "pairs": len(diffs), "margin": claim.margin,
               "delta": None, "ci_low": None, "ci_high": None, "p_value": None, "per_seed": per_seed}
        if len(diffs) >= 2:
            mean, sem = diffs.mean(), diffs.std(ddof=1) / np.sqrt(len(diffs))
            half = stats.t.ppf(0.975, len(diffs) - 1) * sem
            p = float(stats.ttest_1samp(diffs, claim.margin).pvalue) if sem > 0 else 0.0
            row.update(delta=mean, ci_low=mean - half, ci_high=mean + half, p_value=p)
        elif len(diffs) == 1:
            row.update(delta=float(diffs[0]))
        rows.append(row)
    table = pd.DataFrame(rows)
    table["p_holm"] = claims.holm(list(table["p_value"]))
    table["verdict"] = [claims.verdict(d, p, m) if d is not None and not pd.isna(d) else "not run"
                        for d, p, m in zip(table["delta"], table["p_holm"], table["margin"])]
    return table


def fmt(x, signed=False) -> str:
    if x is None or pd.isna(x):
        return "—"
    return f"{x:+.3f}" if signed else f"{x:.3f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("f1", type=Path, help="a run's tables/f1.csv")
    parser.add_argument("--claims", type=Path, help="the run's own tables/claims.csv, shown beside")
    parser.add_argument("--multi-label", nargs="*", default=["bbc-news-pairs"], help="its multi-label datasets")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    f1 = pd.read_csv(args.f1)
    multi = {d: d in args.multi_label for d in f1["dataset"].unique()}
    table = by_seed(f1, multi)
    old = pd.read_csv(args.claims).set_index("claim") if args.claims else None
    lines = ["# The claims judged over seeds (training variance included)", "",
             f"From `{args.f1}`: per pair of cells the difference of their test figures; mean, Student-t 95% "
             "interval over the pairs (each an independent training run), two-sided t-test against the claim's "
             "margin, Holm-adjusted; verdict at α = 0.05 on the adjusted p-value (scripts/claims_by_seed.py). "
             "Beside it, the run's own table: a bootstrap over test texts with the seeds held fixed.", "",
             "| claim | pairs | Δ over seeds [95% t-interval] | p (Holm) | verdict | run's own table: Δ [95% CI], p | "
             "verdict | per-seed differences |", "|---|---|---|---|---|---|---|---|"]
    for _, r in table.iterrows():
        own = own_verdict = "—"
        if old is not None and r["claim"] in old.index:
            o = old.loc[r["claim"]]
            own = f"{fmt(o['delta'], True)} [{fmt(o['ci_low'], True)}, {fmt(o['ci_high'], True)}], p = {fmt(o['p_value'])}"
            own_verdict = o["verdict"]
        ours = f"{fmt(r['delta'], True)} [{fmt(r['ci_low'], True)}, {fmt(r['ci_high'], True)}]"
        lines.append(f"| {r['claim']}. {r['statement']} | {r['pairs']} | {ours} | {fmt(r['p_value'])} "
                     f"({fmt(r['p_holm'])}) | {r['verdict']} | {own} | {own_verdict} | {r['per_seed']} |")
    text = "\n".join(lines) + "\n"
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
