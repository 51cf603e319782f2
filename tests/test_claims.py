"""The claims table on hand-made cells: verdicts follow the numbers, seeds pool, missing cells say 'not run'."""
import json

import numpy as np
import pandas as pd
import pytest

from clsbench import claims, tables

LABELS = ["a", "b", "c"]


def make_data(root, name, multi=False):
    d = root / "results" / "data" / name
    d.mkdir(parents=True)
    (d / "labels.json").write_text(json.dumps({"labels": LABELS, "multi_label": multi}))
    return d


def write_cell(root, dataset, approach, seed, correct, model="m", rank=8, n=200, confident=0.9, valid=None):
    """A cell whose prediction is right for the texts where ``correct`` is True (single-label)."""
    rng = np.random.default_rng(seed)
    gold = [[LABELS[i % 3]] for i in range(n)]
    pred = [g if ok else [LABELS[(LABELS.index(g[0]) + 1) % 3]] for g, ok in zip(gold, correct)]
    probs = [np.where(np.array(LABELS) == p[0], confident, (1 - confident) / 2).astype(np.float32) for p in pred]
    cell = root / "results" / dataset / model / approach / f"r{rank}" / f"s{seed}"
    cell.mkdir(parents=True)
    table = pd.DataFrame({"id": [f"t{i}" for i in range(n)][::-1], "gold": gold[::-1], "probs": probs[::-1],
                          "pred": pred[::-1]})
    table.to_parquet(cell / "predictions.parquet")
    f1 = float(np.mean(correct))
    (cell / "metrics.json").write_text(json.dumps({"f1_micro": f1, "n": n, "seed_noise": float(rng.random())}))
    return cell / "metrics.json"


def accuracy_mask(n, acc, seed):
    mask = np.zeros(n, dtype=bool)
    mask[np.random.default_rng(seed).choice(n, int(acc * n), replace=False)] = True
    return mask


def run(tmp_path, files, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return claims.claims_table(tables.collect(files), tmp_path / "results" / "data").set_index("claim")


def test_verdicts_follow_the_numbers(tmp_path, monkeypatch):
    make_data(tmp_path, "news")
    files = []
    for seed in (1, 2, 3):
        files.append(write_cell(tmp_path, "news", "head", seed, accuracy_mask(200, 0.9, seed)))
        files.append(write_cell(tmp_path, "news", "frozen", seed, accuracy_mask(200, 0.6, seed + 10), rank=0))
        # instruct: as good as the head (same texts right), so claim (a) cannot be decided
        files.append(write_cell(tmp_path, "news", "instruct", seed, accuracy_mask(200, 0.9, seed), rank=64,
                                confident=0.99))
    files.append(write_cell(tmp_path, "news", "tfidf", 42, accuracy_mask(200, 0.98, 7), model="tfidf", rank=0))
    table = run(tmp_path, files, monkeypatch)
    c = table.loc["c"]  # head 0.9 vs frozen 0.6, 3 seeds pooled
    assert c["verdict"] == "supported" and c["pairs"] == 3 and c["texts"] == 200
    assert c["delta"] == pytest.approx(0.3, abs=0.02) and c["ci_low"] > 0.2 and c["p_value"] < 0.01
    assert c["seeds"] == "1, 2, 3" and "head r8 m" in c["a"] and "frozen m" in c["b"]
    a = table.loc["a"]
    assert a["verdict"] == "inconclusive" and a["delta"] == pytest.approx(0) and a["p_value"] == 1.0
    g = table.loc["g"]  # TF-IDF is deterministic: its one seed pairs with each head seed
    assert g["pairs"] == 3 and g["verdict"] == "contradicted" and g["ci_high"] < 0
    b = table.loc["b"]  # ECE: the instruct cell is over-confident (0.99 at 90% accuracy), the head less so
    assert b["metric"] == "ECE" and b["delta"] > 0 and b["verdict"] == "supported"
    for key in ("d", "e", "f"):  # no rank-16, zero-shot or encoder cells: not run, no failure
        assert table.loc[key, "verdict"] == "not run" and table.loc[key, "pairs"] == 0


def test_seeds_do_not_pass_for_independent_texts(tmp_path, monkeypatch):
    """The same 40 texts under 3 seeds: the interval is as wide as one seed's, not sqrt(3) narrower."""
    make_data(tmp_path, "news")
    one, three = [], []
    for seed in (1, 2, 3):
        files = [write_cell(tmp_path, "news", "head", seed, accuracy_mask(40, 0.8, 0), n=40),
                 write_cell(tmp_path, "news", "frozen", seed, accuracy_mask(40, 0.6, 1), rank=0, n=40)]
        three += files
        if seed == 1:
            one = files
    width_one = run(tmp_path, one, monkeypatch).loc["c", ["ci_low", "ci_high"]].diff().iloc[-1]
    width_three = run(tmp_path, three, monkeypatch).loc["c", ["ci_low", "ci_high"]].diff().iloc[-1]
    assert width_three == pytest.approx(width_one, rel=0.25)


def test_invalid_generated_answers_count_against_a_cell(tmp_path):
    """A unit helper check: the claims' per-text counts take invalid answers as false positives."""
    make_data(tmp_path, "news")
    path = tmp_path / "p.parquet"
    pd.DataFrame({"id": ["x", "y"], "gold": [["a"], ["b"]], "pred": [["a"], []], "valid": [True, False]}).to_parquet(path)
    ids, units = claims._units(str(path), LABELS, False, "f1_micro", width=4)
    assert list(ids) == ["x", "y"] and units.tolist() == [[1, 0, 0], [0, 1, 1]]


def test_variants_of_a_model_are_left_out(tmp_path, monkeypatch):
    """A variant (the same model with, say, balanced class weights: ``variant_of``) is not the approach as
    configured: ``--exclude-models`` keeps its cells out of every claim, also those across models."""
    make_data(tmp_path, "news")
    files = [write_cell(tmp_path, "news", "head", 1, accuracy_mask(200, 0.9, 1)),
             write_cell(tmp_path, "news", "head", 1, accuracy_mask(200, 0.5, 3), model="m-balanced"),
             write_cell(tmp_path, "news", "tfidf", 42, accuracy_mask(200, 0.7, 2), model="tfidf", rank=0)]
    assert run(tmp_path, files, monkeypatch).loc["g", "pairs"] == 2  # head vs TF-IDF pairs any model
    claims.main(["--out-dir", "out", "--data-root", "results/data", "--exclude-models", "m-balanced", "--",
                 *map(str, files)])
    g = pd.read_csv(tmp_path / "out" / "claims.csv").set_index("claim").loc["g"]
    assert g["pairs"] == 1 and g["a"] == "head r8 m" and g["delta"] == pytest.approx(0.2, abs=0.02)
