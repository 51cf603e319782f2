"""The claims table on hand-made cells: verdicts follow the numbers, seeds pool, missing cells say 'not run'."""
import json
import re

import numpy as np
import pandas as pd
import pytest

from clsbench import claims, paired, tables

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
    ids, units = paired.units(str(path), LABELS, False, "f1_micro", width=4)
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


def seed_runs(tmp_path, head_accuracies, n=200):
    """Head cells of the given accuracies (one per seed) against frozen cells of 0.6, all on the same texts."""
    make_data(tmp_path, "news")
    files = []
    for seed, acc in enumerate(head_accuracies, start=1):
        files.append(write_cell(tmp_path, "news", "head", seed, accuracy_mask(n, acc, 0), n=n))
        files.append(write_cell(tmp_path, "news", "frozen", seed, accuracy_mask(n, 0.6, 1), rank=0, n=n))
    return files


def interval(tmp_path, files, monkeypatch, resample_seeds):
    monkeypatch.chdir(tmp_path)
    df = tables.collect(files)
    claim = next(c for c in claims.CLAIMS if c.key == "c")
    found = claims.pairs(df, claim, {"news": False})
    result = claims.judge(claim, found, tmp_path / "results" / "data", resample_seeds=resample_seeds)
    return result["ci_low"], result["ci_high"], result


def test_the_two_level_bootstrap_matches_the_text_bootstrap_when_seeds_agree(tmp_path, monkeypatch):
    files = seed_runs(tmp_path, [0.8, 0.8, 0.8])  # three seeds with the very same predictions
    two_level, one_level = (interval(tmp_path, files, monkeypatch, flag) for flag in (True, False))
    assert two_level[:2] == one_level[:2]
    assert two_level[2]["per_seed"] == "news m: s1 +0.200 s2 +0.200 s3 +0.200"
    assert two_level[2]["training_variance"] == "resampled (3 seeds)"


def test_the_two_level_bootstrap_widens_the_interval_when_seeds_disagree(tmp_path, monkeypatch):
    """Seeds at 0.95, 0.65 and 0.80 against 0.60: the text-only interval is narrow around +0.20; with
    the seeds resampled it covers the spread of the three runs (+0.05 to +0.35)."""
    files = seed_runs(tmp_path, [0.95, 0.65, 0.80])
    low2, high2, result = interval(tmp_path, files, monkeypatch, True)
    low1, high1, _ = interval(tmp_path, files, monkeypatch, False)
    assert result["delta"] == pytest.approx(0.2)
    assert (high2 - low2) > 2 * (high1 - low1)
    assert low2 < 0.1 and high2 > 0.3
    assert result["per_seed"] == "news m: s1 +0.350 s2 +0.050 s3 +0.200"


def test_one_seed_says_training_variance_is_not_measured(tmp_path, monkeypatch):
    files = seed_runs(tmp_path, [0.8])
    assert interval(tmp_path, files, monkeypatch, True)[2]["training_variance"] == "one seed: training variance not measured"


def test_holm_adjusts_the_p_values_of_the_claims_that_ran():
    assert claims.holm([0.01, None, 0.04, 0.03]) == pytest.approx([0.03, None, 0.06, 0.06], nan_ok=True)
    assert claims.holm([0.5, 0.001]) == pytest.approx([0.5, 0.002])
    assert claims.verdict(0.05, 0.06, 0.0) == "inconclusive"  # raw 0.03 would have been 'supported'
    assert claims.verdict(-0.05, 0.01, 0.0) == "contradicted"
    assert claims.verdict(0.12, 0.01, 0.10) == "supported"
    assert claims.verdict(0.12, None, 0.10) == "not run"


def test_the_table_carries_holm_adjusted_p_values_and_verdicts_follow_them(tmp_path, monkeypatch):
    files = seed_runs(tmp_path, [0.9, 0.9])
    table = run(tmp_path, files, monkeypatch)
    assert table.loc["c", "p_holm"] == table.loc["c", "p_value"]  # the only claim that ran
    assert table.loc["c", "verdict"] == "supported" and table.loc["a", "verdict"] == "not run"


def test_the_rank_claim_says_whether_the_lora_scale_was_held(tmp_path, monkeypatch):
    make_data(tmp_path, "pairs", multi=False)
    files = []
    for rank, scale in ((8, 2.0), (16, 2.0)):
        path = write_cell(tmp_path, "pairs", "head", 1, accuracy_mask(200, 0.8, rank), rank=rank)
        path.write_text(json.dumps({**json.loads(path.read_text()), "lora_scale": scale}))
        files.append(path)
    monkeypatch.chdir(tmp_path)
    df = tables.collect(files)
    claim = next(c for c in claims.CLAIMS if c.key == "d")
    found = [(a, b) for a, b in zip(*(df[df["rank"] == r].to_dict("records") for r in (16, 8)))]
    assert claims.lora_scales(found) == "alpha/r 2 vs 2: scale held (lora_alpha_ratio), rank alone differs"
    files[1].write_text(json.dumps({**json.loads(files[1].read_text()), "lora_scale": 1.0}))
    df = tables.collect(files)
    found = [(a, b) for a, b in zip(*(df[df["rank"] == r].to_dict("records") for r in (16, 8)))]
    assert "scale not held (fixed lora_alpha)" in claims.lora_scales(found) and claim.rank_a == 16


def test_the_calibration_claim_compares_ece_per_cell_and_reports_brier_beside(tmp_path, monkeypatch):
    """Instruct over-confident on one model and under-confident on the other, the head close to its
    accuracy on both: each cell's ECE is its own (pairs by model), and the Brier score stands beside."""
    make_data(tmp_path, "news")
    files = []
    for model, head_conf, instruct_conf in (("m1", 0.85, 0.99), ("m2", 0.75, 0.55)):
        files.append(write_cell(tmp_path, "news", "head", 1, accuracy_mask(200, 0.8, 1), model=model,
                                confident=head_conf))
        files.append(write_cell(tmp_path, "news", "instruct", 1, accuracy_mask(200, 0.8, 1), model=model, rank=64,
                                confident=instruct_conf))
    b = run(tmp_path, files, monkeypatch).loc["b"]
    assert b["pairs"] == 2 and b["delta"] > 0.1  # head's ECE lower on both models
    assert b["note"].startswith("Brier score, per cell: A ") and "in A's favour" in b["note"]
    brier = float(re.search(r"Δ ([+-][\d.]+)", b["note"])[1])
    assert brier > 0


def test_paired_table_pools_seeds_and_its_interval_widens_when_the_seeds_disagree(tmp_path, monkeypatch):
    """One row per configuration pair: the mean difference over seeds with the per-seed ones, and the
    two-level interval is wider where the encoder's seeds disagree (0.55 / 0.70 / 0.85) than where they
    agree (0.70 each) around the same mean; one seed keeps the per-text test and says so."""
    files = []
    for dataset, encoder_acc in (("agree", (0.7, 0.7, 0.7)), ("disagree", (0.55, 0.7, 0.85))):
        make_data(tmp_path, dataset)
        for seed, acc in zip((1, 2, 3), encoder_acc):
            files.append(write_cell(tmp_path, dataset, "head", seed, accuracy_mask(200, 0.8, seed)))
            files.append(write_cell(tmp_path, dataset, "encoder", seed, accuracy_mask(200, acc, seed + 20),
                                    model="e", rank=0))
    make_data(tmp_path, "single")
    files += [write_cell(tmp_path, "single", "head", 1, accuracy_mask(200, 0.8, 1)),
              write_cell(tmp_path, "single", "encoder", 1, accuracy_mask(200, 0.7, 21), model="e", rank=0)]
    monkeypatch.chdir(tmp_path)
    table = tables.paired_table(tables.collect(files), tmp_path / "results" / "data").set_index("dataset")
    agree, disagree, single = table.loc["agree"], table.loc["disagree"], table.loc["single"]
    for row in (agree, disagree):
        assert row["seeds"] == 3 and row["delta"] == pytest.approx(0.1, abs=0.005)
        assert row["test"] == "two-level bootstrap (seeds, texts)" and row["training_variance"] == "resampled (3 seeds)"
        assert re.fullmatch(r"s1 [+-]\d\.\d{3} s2 [+-]\d\.\d{3} s3 [+-]\d\.\d{3}", row["per_seed"])
    assert "s1 +0.250" in disagree["per_seed"] and "s3 -0.050" in disagree["per_seed"]
    width = {name: row["delta_ci_high"] - row["delta_ci_low"] for name, row in (("agree", agree), ("disagree", disagree))}
    assert width["disagree"] > 1.5 * width["agree"]
    assert single["seeds"] == 1 and single["test"] == "McNemar (exact)"
    assert single["training_variance"] == "one seed: training variance not measured"


def test_claims_by_seed_reads_the_per_seed_differences_of_a_committed_table():
    """scripts/claims_by_seed.py: seeds that disagree give a t-interval that spans zero where the
    pooled mean is negative (the claims run's claim a: contradicted by texts alone, inconclusive over seeds)."""
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("claims_by_seed", REPO / "scripts" / "claims_by_seed.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    rows = []
    for seed, (head, instruct) in zip((42, 43, 44), ((0.90, 0.91), (0.95, 0.89), (0.80, 0.92))):
        for approach, f1 in (("head", head), ("instruct", instruct)):
            rows.append({"dataset": "news", "model": "m", "approach": approach, "rank": 8 if approach == "head" else 64,
                         "seed": seed, "mode": "classifier" if approach == "head" else "score", "f1_micro": f1,
                         "ece": 0.05})
    table = script.by_seed(pd.DataFrame(rows), {"news": False}).set_index("claim")
    a = table.loc["a"]
    diffs = np.array([-0.01, 0.06, -0.12])
    assert a["pairs"] == 3 and a["delta"] == pytest.approx(diffs.mean())
    half = 4.302653 * diffs.std(ddof=1) / np.sqrt(3)  # t(0.975, 2 df)
    assert (a["ci_low"], a["ci_high"]) == pytest.approx((diffs.mean() - half, diffs.mean() + half), abs=1e-5)
    assert a["verdict"] == "inconclusive" and "news m s44 -0.120" in a["per_seed"]
    assert table.loc["c", "verdict"] == "not run"
