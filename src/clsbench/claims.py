"""The paper's claims, tested on the grid's cached predictions (``reports/tables/claims.*``).

Each claim is "approach A beats approach B" on some datasets, by micro-F1 or by calibration (ECE,
lower is better). Its evidence is every pair of cells (A, B) on the same dataset and seed, and the
same model where the claim says so; a deterministic cell (TF-IDF, zero-shot) pairs with every seed
of the other side. Each pair is compared on its own test texts (ECE per cell: probabilities of
different models are never pooled), and Δ is the mean over pairs of A's figure minus B's (for ECE:
B's minus A's, so that Δ > 0 always favours A).

Uncertainty includes training randomness: a two-level bootstrap (:mod:`clsbench.paired`) resamples the seeds within each
stratum (same dataset and models) and the test texts of each dataset (the same texts for every cell
of it), 2000 times; where a stratum has one seed, training variance is not measured and the table
says so. The per-seed differences stand beside Δ. p-values are two-sided against the claim's margin
and Holm-adjusted over the claims that ran.

Verdict at α = 0.05 on the Holm-adjusted p-value, never written by hand: *supported* when it is
below α and Δ is above the claim's margin (0 unless the claim says "far"), *contradicted* when it
is below α and Δ is below the margin, *inconclusive* otherwise, *not run* when the grid has no pair
of cells for it. Variants of a model (``variant_of``: the same model with, say, balanced class weights) are left out:
a claim is about the approaches as configured.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from . import approaches, paired
from .io import read_json, run_cli

ALPHA = paired.ALPHA
DETERMINISTIC = set(approaches.names(deterministic=True))  # one seed stands for all


@dataclass(frozen=True)
class Claim:
    key: str
    text: str
    a: str  # approach of side A (claimed better)
    b: str
    metric: str = "f1_micro"  # or "ece" (lower is better; "brier" is computed beside it)
    datasets: str = "all"  # all | single | multi
    same_model: bool = True
    rank_a: int | None = None  # None: the lowest rank of A's cells
    rank_b: int | None = None
    margin: float = 0.0


CLAIMS = [
    Claim("a", "head ≥ instruction tuning on single-label data (same model)", "head", "instruct", datasets="single"),
    Claim("b", "head better calibrated than instruction tuning (ECE)", "head", "instruct", metric="ece"),
    Claim("c", "LoRA is essential: head > frozen LLM + head", "head", "frozen"),
    Claim("d", "rank 16 ≥ rank 8 on multi-label data", "head", "head", datasets="multi", rank_a=16, rank_b=8),
    Claim("e", "zero-shot prompting far below instruction tuning (by > 0.10)", "instruct", "zeroshot", margin=0.10),
    Claim("f", "head ≥ fine-tuned encoder", "head", "encoder", same_model=False),
    Claim("g", "head ≥ TF-IDF + logistic regression", "head", "tfidf", same_model=False),
]


def _side(df: pd.DataFrame, approach: str, rank: int | None) -> pd.DataFrame:
    cells = df[(df["approach"] == approach) & (df["mode"].isin(["classifier", "score"]))]
    if cells.empty:
        return cells
    cells = cells[cells["rank"] == (rank if rank is not None else cells["rank"].min())]
    if approach in DETERMINISTIC:  # further seeds would only repeat the same predictions
        cells = cells[cells["seed"] == cells["seed"].min()]
    return cells


def pairs(df: pd.DataFrame, claim: Claim, multi: dict[str, bool]) -> list[tuple[pd.Series, pd.Series]]:
    """The (A cell, B cell) pairs a claim is judged on (score mode for instruct / zero-shot cells)."""
    wanted = [d for d in dict.fromkeys(df["dataset"]) if claim.datasets == "all" or multi[d] == (claim.datasets == "multi")]
    side_a, side_b = _side(df, claim.a, claim.rank_a), _side(df, claim.b, claim.rank_b)
    out = []
    for _, a in side_a[side_a["dataset"].isin(wanted)].iterrows():
        for _, b in side_b[side_b["dataset"] == a["dataset"]].iterrows():
            if claim.same_model and a["model"] != b["model"]:
                continue
            if a["seed"] != b["seed"] and not (DETERMINISTIC & {claim.a, claim.b}):
                continue
            out.append((a, b))
    return out


def judge(claim: Claim, cell_pairs, data_root: Path, n_boot: int = 2000, seed: int = 0,
          resample_seeds: bool = True) -> dict:
    """Δ (in A's favour: mean over pairs of the per-cell difference), its seed-aware 95% interval, the
    p-value against the claim's margin and the per-seed differences."""
    if not cell_pairs:
        return {"pairs": 0, "verdict": "not run"}
    units = paired.pair_units(claim.metric, cell_pairs, data_root, claim.a in DETERMINISTIC)
    sign = 1.0 if claim.metric == "f1_micro" else -1.0  # lower ECE / Brier is better
    value, diffs, delta = paired.bootstrap(units, claim.metric, sign, n_boot, seed, resample_seeds)
    low, high, p = paired.interval(delta, claim.margin)
    fig_a = np.mean([paired.metric_value(claim.metric, u["a"].sum(0)) for u in units])
    fig_b = np.mean([paired.metric_value(claim.metric, u["b"].sum(0)) for u in units])
    seeds_per_stratum = [sum(u["stratum"] == s for u in units) for s in dict.fromkeys(u["stratum"] for u in units)]
    per_seed = " | ".join(
        f"{stratum[0]} {stratum[1] if stratum[1] == stratum[2] else ' vs '.join(stratum[1:])}: "
        + " ".join(f"s{u['seed']} {d:+.3f}" for u, d in zip(units, diffs) if u["stratum"] == stratum)
        for stratum in dict.fromkeys(u["stratum"] for u in units))
    return {"pairs": len(cell_pairs), "texts": len({(u["dataset"], i) for u in units for i in u["ids"]}),
            "a_value": float(fig_a), "b_value": float(fig_b), "delta": value, "ci_low": float(low),
            "ci_high": high, "p_value": p, "per_seed": per_seed,
            "training_variance": paired.variance_note(max(seeds_per_stratum))}


def holm(p_values: list[float | None]) -> list[float | None]:
    """Holm–Bonferroni adjusted p-values (None stays None: a claim that did not run)."""
    ran = [(p, i) for i, p in enumerate(p_values) if p is not None and not pd.isna(p)]
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for k, (p, i) in enumerate(sorted(ran)):
        running = max(running, min(1.0, (len(ran) - k) * p))
        adjusted[i] = running
    return adjusted


def verdict(delta: float, p_adjusted: float | None, margin: float) -> str:
    """supported / contradicted where the Holm-adjusted p-value is below α, by the side of the margin Δ lies on."""
    if p_adjusted is None or pd.isna(p_adjusted):
        return "not run"
    if p_adjusted >= ALPHA:
        return "inconclusive"
    return "supported" if delta > margin else "contradicted"


def lora_scales(cell_pairs) -> str:
    """For a rank claim: whether A's and B's LoRA update scale (alpha / r, from their train records)
    was held, so that the claim compares rank and not rank plus scale."""
    def scales(side: int) -> set:
        return {read_json(Path(pair[side]["_dir"]) / "metrics.json").get("lora_scale") for pair in cell_pairs}

    a, b = scales(0), scales(1)
    if None in a | b:
        return "LoRA scale not recorded (cells made before lora_scale)"
    held = a == b and len(a) == 1
    shown = f"alpha/r {'/'.join(f'{x:g}' for x in sorted(a))} vs {'/'.join(f'{x:g}' for x in sorted(b))}"
    return f"{shown}: " + ("scale held (lora_alpha_ratio), rank alone differs" if held else
                           "scale not held (fixed lora_alpha): rank and update scale differ")


def _describe(cell_pairs, side: int) -> str:
    cells = sorted({(c["approach"], int(c["rank"]), c["model"]) for pair in cell_pairs for c in [pair[side]]})
    return "; ".join(f"{a}{f' r{r}' if r else ''} {m}" for a, r, m in cells)


def claims_table(df: pd.DataFrame, data_root: str | Path = "results/data") -> pd.DataFrame:
    """One row per claim of :data:`CLAIMS` (see the module docstring)."""
    data_root = Path(data_root)
    multi = {d: read_json(data_root / d / "labels.json")["multi_label"] for d in dict.fromkeys(df["dataset"])}
    rows = []
    for claim in CLAIMS:
        found = pairs(df, claim, multi)
        result = judge(claim, found, data_root)
        rows.append({
            "claim": claim.key, "statement": claim.text, "metric": "ECE" if claim.metric == "ece" else "micro-F1",
            "a": _describe(found, 0), "b": _describe(found, 1),
            "datasets": ", ".join(dict.fromkeys(a["dataset"] for a, _ in found)),
            "seeds": ", ".join(str(s) for s in sorted({int(a["seed"]) for a, _ in found})),
            "margin": claim.margin, **result,
            "note": lora_scales(found) if found and (claim.rank_a or claim.rank_b) else ""})
        if claim.metric == "ece" and found:  # the same comparison by Brier score, beside (not in the verdict)
            brier = judge(replace(claim, metric="brier"), found, data_root)
            rows[-1]["note"] = (f"Brier score, per cell: A {brier['a_value']:.3f} vs B {brier['b_value']:.3f}, "
                                f"Δ {brier['delta']:+.3f} [{brier['ci_low']:+.3f}, {brier['ci_high']:+.3f}] "
                                f"in A's favour; per seed {brier['per_seed']}")
    columns = ["claim", "statement", "metric", "a", "b", "datasets", "seeds", "pairs", "texts", "a_value", "b_value",
               "delta", "ci_low", "ci_high", "p_value", "p_holm", "margin", "verdict", "training_variance", "per_seed", "note"]
    table = pd.DataFrame(rows).reindex(columns=columns)
    table["p_holm"] = holm(list(table["p_value"]))
    table["verdict"] = [verdict(d, p, m) for d, p, m in zip(table["delta"], table["p_holm"], table["margin"])]
    return table.astype({"pairs": "Int64", "texts": "Int64"})  # counts, empty where a claim did not run


NOTE = ("Each row pairs cells (A, B) on the same dataset and seed (and the same model where the claim says so; "
        "TF-IDF and zero-shot cells are deterministic and pair with every seed). a_value / b_value: the mean over "
        "pairs of each cell's micro-F1 or ECE on the test texts; delta: the mean of the per-pair differences in A's "
        "favour (micro-F1 of A minus B; for ECE, B minus A); per_seed: those differences by dataset and model. "
        "95% interval and p-value: two-level bootstrap (2000 resamples of the seeds within each dataset and model, "
        "and of the test texts); training_variance says where only one seed ran. p_value: two-sided against the "
        "claim's margin; p_holm: Holm-adjusted over the claims that ran. Instruct and zero-shot cells in score "
        "mode. note: for the rank claim, whether the LoRA update scale alpha/r was held across ranks; for the "
        "calibration claim, the same comparison by Brier score, per cell. Verdict at "
        "α = 0.05 on p_holm: supported if delta lies above the margin, contradicted if below, "
        "inconclusive otherwise; 'not run' if the grid has no cells for the claim (configs/claims.yaml runs them all).")


def main(argv: list[str] | None = None) -> None:
    from .tables import collect, write_table

    parser = argparse.ArgumentParser(description="Test the paper's claims on the cells' cached predictions.")
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--data-root", default="results/data")
    parser.add_argument("--exclude-models", nargs="*", default=[],
                        help="model keys left out: variants of a model with other hyperparameters (variant_of)")
    parser.add_argument("metrics", nargs="+", help="the cells' metrics.json files")
    args = parser.parse_args(argv)
    cells = collect(args.metrics)
    table = claims_table(cells[~cells["model"].isin(args.exclude_models)], args.data_root)
    write_table(table, Path(args.out_dir), "claims", "The paper's claims, tested on this grid", NOTE)
    print(table[["claim", "pairs", "delta", "ci_low", "ci_high", "p_value", "p_holm", "verdict"]].to_string(index=False))


if __name__ == "__main__":
    run_cli(main)
