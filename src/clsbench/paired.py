"""Two cells compared on the same test texts, with training randomness included: the per-text units
of micro-F1, ECE and Brier score, and a two-level bootstrap over pairs of cells (the seeds within
each stratum of the same dataset and models, then the test texts, paired), used by the claims, the
paired tests, best.json's runner-up and the decision cards."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .io import read_json
from .metrics import forecasts, invalid_mask, scored_indicators

ALPHA = 0.05


def units(pred_file: str, labels: list[str], multi: bool, metric: str, width: int):
    """Per test text: (id, TP, FP, FN) for micro-F1, or the text's forecasts' summed (hit − conf)
    per confidence bin and its forecast count for ECE."""
    df = pd.read_parquet(pred_file).sort_values("id").reset_index(drop=True)
    gold, pred = scored_indicators(list(map(list, df["gold"])), list(map(list, df["pred"])), labels, invalid_mask(df))
    if metric == "f1_micro":
        gold, pred = (np.pad(m, ((0, 0), (0, width - m.shape[1]))) for m in (gold, pred))
        g, p = gold.astype(bool), pred.astype(bool)
        return df["id"].to_numpy(), np.stack([(g & p).sum(1), (~g & p).sum(1), (g & ~p).sum(1)], 1).astype(float)
    probs = np.stack(df["probs"]).astype(np.float64)
    if metric == "brier":  # per text: squared error summed over its forecasts, and their count
        squared = ((probs - gold[:, :len(labels)]) ** 2).sum(1)
        return df["id"].to_numpy(), np.stack([squared, np.full(len(df), len(labels) if multi else 1.0)], 1)
    conf, hit = forecasts(probs, gold[:, :len(labels)], multi)
    per_text = conf.reshape(len(df), -1), hit.reshape(len(df), -1)
    bins = 15
    which = np.minimum((per_text[0] * bins).astype(int), bins - 1)
    sums = np.zeros((len(df), bins + 1))
    for k in range(bins):
        sums[:, k] = ((per_text[1] - per_text[0]) * (which == k)).sum(1)
    sums[:, bins] = per_text[0].shape[1]
    return df["id"].to_numpy(), sums


def metric_value(metric: str, totals: np.ndarray) -> np.ndarray:
    """micro-F1 or ECE from summed units (last axis); any leading axes are resamples."""
    if metric == "f1_micro":
        tp, fp, fn = totals[..., 0], totals[..., 1], totals[..., 2]
        return np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros_like(tp), where=(2 * tp + fp + fn) > 0)
    if metric == "brier":
        return totals[..., 0] / totals[..., 1]
    return np.abs(totals[..., :-1]).sum(-1) / totals[..., -1]


def pair_units(metric: str, cell_pairs, data_root: Path, a_deterministic: bool = False) -> list[dict]:
    """Per pair: its dataset, stratum (dataset and models: the seeds of one stratum are exchangeable),
    training seed (B's where A is deterministic), test-text ids and the per-text units of A and B."""
    out = []
    for a, b in cell_pairs:
        meta = read_json(Path(data_root) / a["dataset"] / "labels.json")
        width = len(meta["labels"]) + 1  # + the invalid-answer column
        ids_a, ua = units(a["_predictions"], meta["labels"], meta["multi_label"], metric, width)
        ids_b, ub = units(b["_predictions"], meta["labels"], meta["multi_label"], metric, width)
        if not np.array_equal(ids_a, ids_b):
            raise ValueError(f"{a['_predictions']} and {b['_predictions']} do not hold the same test texts")
        trained = b if a_deterministic else a  # whose seed varies
        out.append({"dataset": a["dataset"], "stratum": (a["dataset"], a["model"], b["model"]),
                    "seed": int(trained["seed"]), "ids": ids_a, "a": ua, "b": ub})
    return out


def bootstrap(units: list[dict], metric: str, sign: float, n_boot: int = 2000, seed: int = 0,
              resample_seeds: bool = True) -> tuple[float, np.ndarray, np.ndarray]:
    """Δ = the mean over pairs of (A's figure − B's figure) × ``sign``, each pair's figures on the same
    texts, and ``n_boot`` resampled Δ: texts are resampled per dataset (the same resample for every
    cell of it: paired), and, with ``resample_seeds``, the seeds within each stratum (same dataset and
    models) with replacement, so that disagreement between training runs widens the interval. Where
    the seeds of a stratum agree, the seed level changes nothing (the same text resamples are drawn
    either way). Returns (Δ, per-pair differences, resampled Δ)."""
    text_rng, seed_rng = np.random.default_rng(seed), np.random.default_rng([seed, 1])
    weights = {}
    for u in units:
        if u["dataset"] not in weights:
            n = len(u["ids"])
            weights[u["dataset"]] = text_rng.multinomial(n, np.full(n, 1 / n), size=n_boot).astype(float)
    diffs = np.array([sign * (metric_value(metric, u["a"].sum(0)) - metric_value(metric, u["b"].sum(0))) for u in units])
    resampled = np.stack([sign * (metric_value(metric, weights[u["dataset"]] @ u["a"])
                                  - metric_value(metric, weights[u["dataset"]] @ u["b"])) for u in units], 1)
    multiplicity = np.ones((n_boot, len(units)))
    if resample_seeds:
        for stratum in dict.fromkeys(u["stratum"] for u in units):
            members = [i for i, u in enumerate(units) if u["stratum"] == stratum]
            draws = seed_rng.multinomial(len(members), np.full(len(members), 1 / len(members)), size=n_boot)
            multiplicity[:, members] = draws
    delta = (resampled * multiplicity).sum(1) / multiplicity.sum(1)
    return float(diffs.mean()), diffs, delta


def interval(delta: np.ndarray, margin: float = 0.0) -> tuple[float, float, float]:
    """95% interval of resampled differences and the two-sided p-value against ``margin``."""
    low, high = np.quantile(delta, [ALPHA / 2, 1 - ALPHA / 2])
    return float(low), float(high), float(min(1.0, 2 * min(np.mean(delta <= margin), np.mean(delta >= margin))))


def variance_note(seeds: int) -> str:
    return f"resampled ({seeds} seeds)" if seeds > 1 else "one seed: training variance not measured"


def paired_difference(cell_pairs, data_root: Path, n_boot: int = 2000, seed: int = 0) -> dict:
    """micro-F1 of A − B over seed-matched pairs of one configuration pair (paired tests): the mean of
    the per-seed differences, its interval and two-sided p from the same two-level bootstrap as the
    claims (seeds, then texts), and the per-seed differences."""
    found = pair_units("f1_micro", cell_pairs, data_root)
    value, diffs, delta = bootstrap(found, "f1_micro", 1.0, n_boot, seed)
    low, high, p = interval(delta)
    return {"seeds": len(found), "delta": value, "ci_low": low, "ci_high": high, "p_value": p,
            "per_seed": " ".join(f"s{u['seed']} {d:+.3f}" for u, d in zip(found, diffs)),
            "training_variance": variance_note(len(found))}
