"""Classification metrics computed from a cell's ``predictions.parquet`` only (changing a metric
never retrains). Merges the training and inference figures recorded beside it into ``metrics.json``."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, hamming_loss, precision_recall_fscore_support

from . import UserError, health
from .io import read_json, run_cli, write_json


def indicator(rows, labels: list[str]) -> np.ndarray:
    """Label lists → 0/1 matrix in the order of ``labels``; unknown labels are an error."""
    index = {label: i for i, label in enumerate(labels)}
    y = np.zeros((len(rows), len(labels)), dtype=np.int8)
    for r, row in enumerate(rows):
        for label in row:
            if label not in index:
                raise UserError(f"label '{label}' in predictions is not in the label set {labels}")
            y[r, index[label]] = 1
    return y


def scored_indicators(gold_rows, pred_rows, labels: list[str], invalid=None) -> tuple[np.ndarray, np.ndarray]:
    """(gold, pred) 0/1 matrices as every metric scores them. An invalid answer (generate mode: the
    text named no allowed label) is a wrong answer: it predicts no label and one false positive, held
    in an extra column that no gold row has. So single-label micro-F1 equals accuracy, and an invalid
    answer costs a multi-label cell precision too, not only recall."""
    gold, pred = indicator(gold_rows, labels), indicator(pred_rows, labels)
    invalid = np.zeros(len(gold), dtype=bool) if invalid is None else np.asarray(invalid, dtype=bool)
    if invalid.any():
        pred[invalid] = 0
        gold = np.hstack([gold, np.zeros((len(gold), 1), dtype=np.int8)])
        pred = np.hstack([pred, invalid[:, None].astype(np.int8)])
    return gold, pred


def invalid_mask(df: pd.DataFrame) -> np.ndarray | None:
    """Rows of a predictions table whose answer was invalid (``valid`` column of generate mode)."""
    return None if "valid" not in df.columns else ~df["valid"].astype(bool).to_numpy()


def classification_metrics(gold_rows, pred_rows, labels: list[str], multi_label: bool, invalid=None) -> dict:
    """micro/macro/weighted F1, per-class P/R/F1, and accuracy (single) or subset acc. + Hamming loss
    (multi). ``invalid``: rows whose answer was invalid, scored as wrong (:func:`scored_indicators`);
    micro figures and accuracy count their false positive, per-class and macro figures their miss."""
    gold, pred = scored_indicators(gold_rows, pred_rows, labels, invalid)
    n_labels = len(labels)
    out = {"n": len(gold)}
    p, r, f, _ = precision_recall_fscore_support(gold, pred, average="micro", zero_division=0)
    out["f1_micro"], out["precision_micro"], out["recall_micro"] = float(f), float(p), float(r)
    for avg in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(gold, pred, average=avg, labels=list(range(n_labels)),
                                                     zero_division=0)
        out[f"f1_{avg}"], out[f"precision_{avg}"], out[f"recall_{avg}"] = float(f), float(p), float(r)
    p, r, f, s = precision_recall_fscore_support(gold, pred, average=None, labels=list(range(n_labels)),
                                                 zero_division=0)
    out["per_class"] = {label: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
                        for i, label in enumerate(labels)}
    if multi_label:
        out["subset_accuracy"] = float(accuracy_score(gold, pred))
        out["hamming_loss"] = float(hamming_loss(gold[:, :n_labels], pred[:, :n_labels]))
    else:
        out["accuracy"] = float(accuracy_score(gold, pred))
    out["invalid_answers"] = int(np.sum(invalid)) if invalid is not None else 0
    return out


def forecasts(probs: np.ndarray, gold: np.ndarray, multi_label: bool) -> tuple[np.ndarray, np.ndarray]:
    """(confidence, outcome) pairs that calibration is judged on.

    Single-label: top-class probability and whether the top class is the gold one. Multi-label:
    every (text, label) probability as a Bernoulli forecast of that label.
    """
    if multi_label:
        return probs.ravel(), gold.ravel().astype(float)
    return probs.max(1), (probs.argmax(1) == gold.argmax(1)).astype(float)


def reliability_bins(conf: np.ndarray, hit: np.ndarray, bins: int = 15) -> pd.DataFrame:
    """Equal-width bins: mean confidence, observed frequency and count of the non-empty bins."""
    which = np.minimum((conf * bins).astype(int), bins - 1)
    table = pd.DataFrame({"bin": which, "conf": conf, "hit": hit}).groupby("bin")
    return pd.DataFrame({"conf": table["conf"].mean(), "freq": table["hit"].mean(), "count": table.size()})


def calibration(probs: np.ndarray, gold: np.ndarray, multi_label: bool, bins: int = 15) -> dict:
    """Expected calibration error over equal-width bins, and Brier score (see :func:`forecasts`).

    Brier: single-label, mean squared distance of the probability vector to the one-hot gold;
    multi-label, mean squared error of the per-label forecasts.
    """
    conf, hit = forecasts(probs, gold, multi_label)
    table = reliability_bins(conf, hit, bins)
    ece = float((table["count"] * (table["freq"] - table["conf"]).abs()).sum() / len(conf))
    per_text = (probs - gold) ** 2 if multi_label else np.sum((probs - gold) ** 2, axis=1)
    return {"ece": ece, "brier": float(np.mean(per_text)), "ece_bins": bins}


def resampled_f1_micro(gold: np.ndarray, pred: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Micro-F1 of each resample: ``idx`` holds one row of text indices per resample."""
    g, p = gold.astype(bool), pred.astype(bool)
    tp, fp, fn = ((a & b).sum(1).astype(float)[idx].sum(1) for a, b in ((g, p), (~g, p), (g, ~p)))
    return np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros_like(tp), where=(2 * tp + fp + fn) > 0)


def resamples(n: int, n_boot: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def bootstrap_f1_micro(gold: np.ndarray, pred: np.ndarray, n_boot: int = 1000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of micro-F1, resampling test texts with a fixed seed."""
    f1 = resampled_f1_micro(gold, pred, resamples(len(gold), n_boot, seed))
    low, high = np.quantile(f1, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> float:
    """Exact McNemar test (binomial on the discordant pairs): two-sided p-value."""
    from scipy.stats import binomtest

    b = int(np.sum(correct_a & ~correct_b))
    c = int(np.sum(~correct_a & correct_b))
    return 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5).pvalue)


def paired_bootstrap(gold: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, n_boot: int = 2000,
                     seed: int = 0) -> tuple[float, float, float]:
    """Micro-F1 difference A - B over joint resamples of the texts: (ci_low, ci_high, two-sided p)."""
    idx = resamples(len(gold), n_boot, seed)
    delta = resampled_f1_micro(gold, pred_a, idx) - resampled_f1_micro(gold, pred_b, idx)
    p = min(1.0, 2 * min(np.mean(delta <= 0), np.mean(delta >= 0)))
    low, high = np.quantile(delta, [0.025, 0.975])
    return float(low), float(high), float(p)


def compare(pred_a: str | Path, pred_b: str | Path, labels_json: str | Path) -> dict:
    """Paired comparison of two cells on the same test texts (joined on id): McNemar for
    single-label (exact-match correctness), paired bootstrap of micro-F1 for multi-label."""
    meta = read_json(labels_json)
    a, b = pd.read_parquet(pred_a), pd.read_parquet(pred_b)
    joined = a.merge(b, on="id", suffixes=("_a", "_b"))
    if len(joined) != len(a) or len(joined) != len(b):
        raise UserError(f"{pred_a} and {pred_b} do not hold the same test texts")
    labels = meta["labels"]
    gold_rows = list(map(list, joined["gold_a"]))
    gold, pa = scored_indicators(gold_rows, list(map(list, joined["pred_a"])), labels, _invalid(joined, "_a"))
    _, pb = scored_indicators(gold_rows, list(map(list, joined["pred_b"])), labels, _invalid(joined, "_b"))
    width = max(gold.shape[1], pa.shape[1], pb.shape[1])  # the invalid-answer column, where either has one
    gold, pa, pb = (np.pad(m, ((0, 0), (0, width - m.shape[1]))) for m in (gold, pa, pb))
    low, high, p_boot = paired_bootstrap(gold, pa, pb)
    out = {"n": len(joined), "delta_ci_low": low, "delta_ci_high": high}
    if meta["multi_label"]:
        out.update(test="paired bootstrap", p_value=p_boot)
    else:
        out.update(test="McNemar (exact)", p_value=mcnemar((pa == gold).all(1), (pb == gold).all(1)))
    return out


def _invalid(joined: pd.DataFrame, suffix: str):
    column = f"valid{suffix}"
    return None if column not in joined.columns else ~joined[column].fillna(True).astype(bool).to_numpy()


def read_predictions(path: str | Path, infos: list[str | Path] = ()) -> pd.DataFrame:
    """A cell's predictions cache, checked against the SHA-256 its predict_info.json records; a
    mismatching or unreadable file is removed (the next run rebuilds it) and reported in one line."""
    from .faults import check_file, corrupted

    for info in infos:
        check_file(path, read_json(info).get("predictions_sha256"), info)
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
        raise corrupted(Path(path), f"cannot be read as parquet ({str(err).splitlines()[0]})", Path(path)) from None


def evaluate(predictions: str | Path, labels_json: str | Path, extra: list[str | Path] = ()) -> dict:
    """Metrics of one cell; ``extra`` JSON files (train/predict info) are merged in under their keys."""
    meta = read_json(labels_json)
    df = read_predictions(predictions, extra)
    for col in ("id", "gold", "pred"):
        if col not in df.columns:
            raise UserError(f"{predictions}: column '{col}' missing; the predictions cache is not valid")
    gold_rows, pred_rows, invalid = list(map(list, df["gold"])), list(map(list, df["pred"])), invalid_mask(df)
    metrics = classification_metrics(gold_rows, pred_rows, meta["labels"], meta["multi_label"], invalid)
    metrics["multi_label"] = meta["multi_label"]
    gold, pred = scored_indicators(gold_rows, pred_rows, meta["labels"], invalid)
    metrics["f1_micro_ci95"] = list(bootstrap_f1_micro(gold, pred))
    if "probs" in df.columns and df["probs"].notna().all():
        probs = np.stack(df["probs"]).astype(np.float64)
        if probs.shape == (len(gold), len(meta["labels"])):
            metrics.update(calibration(probs, gold[:, :len(meta["labels"])], meta["multi_label"]))
    metrics.update(merge_records([(Path(path).stem, read_json(path)) for path in extra], metrics))
    n_labels = len(meta["labels"])
    trained = _trained(predictions, metrics)
    flags = health.prediction_flags(gold[:, :n_labels], pred[:, :n_labels], meta["labels"], meta["multi_label"], invalid,
                                    trained)
    metrics["flags"] = flags + health.training_flags(metrics)
    metrics["degenerate"] = health.is_degenerate(metrics["flags"])
    metrics["undertrained"] = any(f["flag"] == "undertrained" for f in metrics["flags"])
    return metrics


def merge_records(records: list[tuple[str, dict]], computed: dict) -> dict:
    """The cell's records (``(name, record)``: train_info, predict_info ...) as metrics.json keys, merged
    explicitly: a metric computed from the predictions is never replaced, nor are the dataset's ``labels``,
    ``multi_label`` and ``n``; a key that two records give with different values keeps the first record's
    value and adds the later one's as ``<record>_<key>`` (predict_info's peak_memory_mb as
    ``predict_peak_memory_mb``), so no record's value is dropped."""
    out: dict = {}
    for name, record in records:
        prefix = name.replace("_info", "")
        for key, value in record.items():
            if key in computed or key in ("labels", "multi_label", "n"):
                continue
            if key not in out:
                out[key] = value
            elif out[key] != value:
                out[f"{prefix}_{key}"] = value
    return out


def _trained(predictions: str | Path, metrics: dict) -> bool:
    """Whether the cell learned from training data (a prompting cell records 0 trainable parameters;
    its validation metrics, which have no train record, are known by the approach in their path)."""
    from . import approaches

    if "trainable_params" in metrics:
        return bool(metrics["trainable_params"])
    untrained = set(approaches.names(stages="predict"))
    return not untrained & set(Path(predictions).parts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Compute metrics.json of one cell from its predictions.")
    parser.add_argument("--predictions", required=True)
    parser.add_argument("--labels", required=True, help="the dataset's labels.json")
    parser.add_argument("--extra", nargs="*", default=[], help="train_info.json, predict_info.json ...")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    metrics = evaluate(args.predictions, args.labels, args.extra)
    write_json(args.out, metrics)
    print(json.dumps({k: metrics[k] for k in ("n", "f1_micro", "f1_macro")}))
    if metrics["flags"]:
        print(health.line(args.out, metrics["flags"]))


if __name__ == "__main__":
    run_cli(main)


def decide(probs: np.ndarray, multi_label: bool, threshold, min_labels: int = 0) -> np.ndarray:
    """Indicator matrix of predicted labels. Multi-label: each label whose probability reaches its
    threshold; with ``min_labels: 1`` a text where none does gets the label closest to its threshold."""
    if multi_label:
        out = (probs >= threshold).astype(np.int8)
        if min_labels and len(out):
            empty = out.sum(1) == 0
            out[empty, (probs - threshold)[empty].argmax(1)] = 1
        return out
    out = np.zeros_like(probs, dtype=np.int8)
    out[np.arange(len(probs)), probs.argmax(axis=1)] = 1
    return out


def label_lists(indicators: np.ndarray, labels: list[str]) -> list[list[str]]:
    """Each row of an indicator matrix (:func:`decide`) as the list of its labels."""
    names = np.array(labels)
    return [list(names[row.astype(bool)]) for row in indicators]
