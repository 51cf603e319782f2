import json

import numpy as np
import pandas as pd
import pytest

from clsbench import UserError, metrics, tables


def test_single_label_metrics_by_hand():
    gold = [["a"], ["a"], ["b"], ["c"]]
    pred = [["a"], ["b"], ["b"], ["a"]]
    m = metrics.classification_metrics(gold, pred, ["a", "b", "c"], multi_label=False)
    assert m["accuracy"] == pytest.approx(0.5) and m["f1_micro"] == pytest.approx(0.5)
    # a: P=1/2 R=1/2 F=.5; b: P=1/2 R=1 F=2/3; c: F=0
    assert m["per_class"]["b"]["f1"] == pytest.approx(2 / 3)
    assert m["f1_macro"] == pytest.approx((0.5 + 2 / 3 + 0) / 3)
    assert m["f1_weighted"] == pytest.approx((0.5 * 2 + 2 / 3 * 1 + 0) / 4)


def test_multi_label_metrics_by_hand():
    gold = [["a", "b"], ["b"], []]
    pred = [["a"], ["b", "c"], []]
    m = metrics.classification_metrics(gold, pred, ["a", "b", "c"], multi_label=True)
    # TP=2 (a, b), FP=1 (c), FN=1 (b) -> micro P=R=F=2/3
    assert m["f1_micro"] == pytest.approx(2 / 3)
    assert m["subset_accuracy"] == pytest.approx(1 / 3)
    assert m["hamming_loss"] == pytest.approx(2 / 9)


def test_invalid_single_label_answer_is_a_wrong_answer():
    """An unparseable answer (empty prediction, valid False) is a miss and a false positive:
    single-label micro-F1 equals accuracy."""
    gold = [["a"], ["b"], ["a"], ["c"], ["b"]]
    pred = [["a"], [], [], ["a"], ["b"]]
    invalid = [False, True, True, False, False]
    m = metrics.classification_metrics(gold, pred, ["a", "b", "c"], multi_label=False, invalid=invalid)
    assert m["accuracy"] == pytest.approx(2 / 5) and m["f1_micro"] == pytest.approx(m["accuracy"])
    assert m["precision_micro"] == pytest.approx(2 / 5) and m["invalid_answers"] == 2
    assert m["per_class"]["b"]["recall"] == pytest.approx(1 / 2)  # the invalid answer missed its b
    # without the invalid flag an empty prediction would be a miss only: micro-F1 above accuracy
    lenient = metrics.classification_metrics(gold, pred, ["a", "b", "c"], multi_label=False)
    assert lenient["f1_micro"] > lenient["accuracy"]


def test_invalid_multi_label_answer_costs_precision_too():
    gold = [["a", "b"], ["b"]]
    m = metrics.classification_metrics(gold, [["a", "b"], []], ["a", "b"], multi_label=True, invalid=[False, True])
    # TP=2, FN=1 (b), FP=1 (the invalid answer) -> P=R=F=2/3
    assert m["f1_micro"] == pytest.approx(2 / 3) and m["precision_micro"] == pytest.approx(2 / 3)
    assert m["subset_accuracy"] == pytest.approx(1 / 2) and m["hamming_loss"] == pytest.approx(1 / 4)


def test_evaluate_scores_invalid_generated_answers_as_wrong(tmp_path):
    """A generate-mode cache, hand-made: evaluate gives micro-F1 = accuracy and a CI around it."""
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"labels": ["a", "b"], "multi_label": False}))
    gold = [["a"], ["b"]] * 10
    pred = [["a"], ["b"]] * 5 + [["a"], []] * 5
    valid = [True, True] * 5 + [True, False] * 5
    pd.DataFrame({"id": [str(i) for i in range(20)], "gold": gold, "pred": pred, "valid": valid,
                  "generated": ["x"] * 20}).to_parquet(tmp_path / "p.parquet")
    m = metrics.evaluate(tmp_path / "p.parquet", labels)
    assert m["accuracy"] == pytest.approx(0.75) and m["f1_micro"] == pytest.approx(0.75)
    low, high = m["f1_micro_ci95"]
    assert low <= 0.75 <= high
    # the paired test sees the invalid answers as errors too
    pd.DataFrame({"id": [str(i) for i in range(20)], "gold": gold, "pred": gold}).to_parquet(tmp_path / "q.parquet")
    result = metrics.compare(tmp_path / "q.parquet", tmp_path / "p.parquet", labels)
    assert result["delta_ci_low"] > 0 and result["p_value"] == pytest.approx(2 * 0.5**5)


def test_unknown_predicted_label_is_an_error():
    with pytest.raises(UserError, match="label 'z' in predictions is not in the label set"):
        metrics.classification_metrics([["a"]], [["z"]], ["a", "b"], multi_label=False)


def write_cell(root, dataset, model, rank, seed, f1, trainable=8500, total=2_000_000, approach="head"):
    cell = root / "results" / dataset / model / approach / f"r{rank}" / f"s{seed}"
    cell.mkdir(parents=True)
    (cell / "metrics.json").write_text(json.dumps({"f1_micro": f1, "f1_macro": f1 - 0.1, "n": 10,
                                                   "trainable_params": trainable, "total_params": total}))
    return cell / "metrics.json"


def test_f1_table_csv_and_paper_layout(tmp_path):
    files = [write_cell(tmp_path, "news", "m", 8, 1, 0.9), write_cell(tmp_path, "news", "m", 8, 2, 0.8),
             write_cell(tmp_path, "pairs", "m", 8, 1, 0.7), write_cell(tmp_path, "news", "m", 16, 1, 0.95, 17000)]
    df = tables.render(files, tmp_path / "f1.csv", tmp_path / "f1.md")
    csv = pd.read_csv(tmp_path / "f1.csv")
    assert list(csv.columns[:10]) == ["dataset", "model", "approach", "rank", "seed", "mode", "f1_micro", "f1_macro",
                                      "trainable_params", "total_params"]
    assert len(csv) == 4 and len(df) == 4
    md = (tmp_path / "f1.md").read_text()
    assert "| Classification head (r=8)  | m       | 2.0M           | 8.5K               | 0.850 ± 0.071 | 0.700   |" in md
    assert "| Classification head (r=16) | m       | 2.0M           | 17.0K              | 0.950  " in md
    assert "–" in md  # r=16 has no pairs cell


def test_per_label_table_holds_multi_label_cells_rarest_label_first(tmp_path):
    files = []
    for seed, f1_rare in ((1, 0.2), (2, 0.4)):
        path = write_cell(tmp_path, "pairs", "m", 8, seed, 0.7)
        metrics = json.loads(path.read_text())
        metrics.update(subset_accuracy=0.5, per_class={"common": {"f1": 0.9, "support": 40},
                                                       "rare": {"f1": f1_rare, "support": 3}})
        path.write_text(json.dumps(metrics))
        files.append(path)
    files.append(write_cell(tmp_path, "news", "m", 8, 1, 0.9))  # single-label: not in the table
    table = tables.per_label_table(tables.collect(files))
    assert table["label"].tolist() == ["rare", "common"] and set(table["dataset"]) == {"pairs"}
    rare = table.iloc[0]
    assert rare["seeds"] == 2 and rare["f1_mean"] == pytest.approx(0.3) and rare["f1_sd"] == pytest.approx(0.1414, abs=1e-3)


def test_instruct_cells_enter_once_per_inference_mode(tmp_path):
    files = [write_cell(tmp_path, "news", "m", 8, 1, 0.9), write_cell(tmp_path, "news", "m", 64, 1, 0.8, approach="instruct")]
    generate = files[1].parent / "metrics_generate.json"
    generate.write_text(json.dumps({"f1_micro": 0.7, "n": 10, "invalid_output_rate": 0.25, "trainable_params": 8500}))
    df = tables.render([*files, generate], tmp_path / "f1.csv", tmp_path / "f1.md")
    assert list(zip(df["approach"], df["mode"])) == [("head", "classifier"), ("instruct", "generate"),
                                                     ("instruct", "score")]
    md = (tmp_path / "f1.md").read_text()
    assert "| Instruction tuning (r=64), generate | m       |" in md and "Instruction tuning (r=64), score" in md
    assert "0.250" in md  # the invalid-output rate, in the uncertainty section


def test_human_counts():
    assert [tables.human(x) for x in (1_234_000_000, 5_600_000, 270_000_000, 8512, 12)] == ["1.2B", "5.6M", "270M", "8.5K", "12"]


def test_f1_table_shows_distance_to_tfidf_and_orders_approaches(tmp_path):
    files = [write_cell(tmp_path, "news", "tfidf", 0, 1, 0.90, 1000, 1000, approach="tfidf"),
             write_cell(tmp_path, "news", "enc", 0, 1, 0.93, 22_000_000, 22_000_000, approach="encoder"),
             write_cell(tmp_path, "news", "m", 8, 1, 0.95)]
    df = tables.render(files, tmp_path / "f1.csv", tmp_path / "f1.md")
    assert list(df["approach"]) == ["head", "encoder", "tfidf"]
    assert df["f1_micro_minus_tfidf"].round(3).tolist() == [0.05, 0.03, 0.0]
    md = (tmp_path / "f1.md").read_text()
    assert "0.950 (+0.050)" in md and "0.930 (+0.030)" in md
    assert "| TF-IDF + logistic regression | tfidf   | 1.0K           | 1.0K               | 0.900          |" in md


def test_calibration_by_hand():
    # single-label: confidences 0.9 (right), 0.6 (wrong) -> bins 13 and 9: ECE = (0.1 + 0.6) / 2
    probs = np.array([[0.9, 0.1], [0.6, 0.4]])
    gold = np.array([[1, 0], [0, 1]])
    cal = metrics.calibration(probs, gold, multi_label=False)
    assert cal["ece"] == pytest.approx(0.35)
    assert cal["brier"] == pytest.approx(((0.1**2 + 0.1**2) + (0.6**2 + 0.6**2)) / 2)
    # multi-label: forecasts 0.8, 0.8 (one positive) and 0.1, 0.1 (no positive)
    cal = metrics.calibration(np.array([[0.8, 0.1], [0.8, 0.1]]), np.array([[1, 0], [0, 0]]), multi_label=True)
    assert cal["ece"] == pytest.approx(0.5 * abs(0.5 - 0.8) + 0.5 * abs(0.0 - 0.1))
    assert cal["brier"] == pytest.approx((0.2**2 + 0.1**2 + 0.8**2 + 0.1**2) / 4)


def test_perfectly_calibrated_forecasts_have_small_ece():
    rng = np.random.default_rng(0)
    p = rng.uniform(size=20000)
    y = (rng.uniform(size=20000) < p).astype(int)
    assert metrics.calibration(p[:, None], y[:, None], multi_label=True)["ece"] < 0.02


def test_bootstrap_interval_contains_the_estimate_and_shrinks_with_n():
    rng = np.random.default_rng(1)
    gold = np.eye(4, dtype=np.int8)[rng.integers(0, 4, 400)]
    pred = gold.copy()
    flip = rng.uniform(size=400) < 0.2
    pred[flip] = np.roll(pred[flip], 1, axis=1)
    f1 = metrics.classification_metrics([[str(i)] for i in gold.argmax(1)], [[str(i)] for i in pred.argmax(1)],
                                        ["0", "1", "2", "3"], False)["f1_micro"]
    low, high = metrics.bootstrap_f1_micro(gold, pred, seed=0)
    assert low < f1 < high and high - low < 0.1
    assert metrics.bootstrap_f1_micro(gold, pred, seed=0) == (low, high)  # fixed seed: reproducible
    low_small, high_small = metrics.bootstrap_f1_micro(gold[:50], pred[:50], seed=0)
    assert high_small - low_small > high - low


def test_paper_figures_are_matched_by_model_slug_approach_rank_and_dataset():
    df = pd.DataFrame({"model": ["llama-3-2-1b", "llama-3-2-1b", "smollm2-135m", "modernbert-base"],
                       "approach": ["head", "head", "head", "encoder"], "rank": [8, 16, 8, 0],
                       "dataset": ["clv", "wipo", "clv", "clv"]})
    paper = {"clv": "CLV", "wipo": "WIPO"}
    assert tables.paper_figures(df, "f1_micro", paper).tolist()[:2] == [0.824, 0.787]  # Table 2
    assert np.isnan(tables.paper_figures(df, "f1_micro", paper)[2])  # not in the paper
    assert tables.paper_figures(df, "f1_micro", paper)[3] == 0.852  # ModernBERT-base, CLV
    assert tables.paper_figures(df, "train_samples_per_s", paper)[0] == 11.37  # Appendix D
    assert np.isnan(tables.paper_figures(df, "f1_micro", {})).all()  # datasets not mapped to the paper's


def test_all_tables_in_csv_markdown_and_latex(tmp_path):
    files = [write_cell(tmp_path, "news", "m", 8, 1, 0.9)]
    stats = tmp_path / "results" / "data" / "news" / "stats.json"
    stats.parent.mkdir(parents=True)
    split = {"n": 10, "multi_label_share": 0.0, "mean_words": 12.5, "median_words": 12, "label_counts": {}}
    stats.write_text(json.dumps({"labels": 3, "multi_label": False, "duplicates_removed": {"all": 2},
                                 "train": split, "val": split, "test": split}))
    pd.DataFrame({"id": ["1"], "text": ["a short text"], "labels": [["x"]]}).to_parquet(stats.parent / "train.parquet")
    tables.render_all(files, [stats], tmp_path / "out", {})
    for stem in ("f1", "throughput", "dataset_stats", "calibration"):
        for ext in ("csv", "md", "tex"):
            assert (tmp_path / "out" / f"{stem}.{ext}").stat().st_size > 50, f"{stem}.{ext}"
    assert "\\toprule" in (tmp_path / "out" / "f1.tex").read_text()
    throughput_md = (tmp_path / "out" / "throughput.md").read_text()
    assert "nan" not in throughput_md  # missing figures (no paper figure for this cell) are blank cells
    assert pd.read_csv(tmp_path / "out" / "dataset_stats.csv")["duplicates_removed"].tolist() == [2]


def test_mcnemar_by_hand():
    a = np.array([True] * 10 + [False] * 0 + [True] * 5)
    b = np.array([False] * 10 + [True] * 5)
    # 10 discordant pairs where only A is right, 0 the other way: p = 2 * 0.5**10
    assert metrics.mcnemar(a, b) == pytest.approx(2 * 0.5**10)
    assert metrics.mcnemar(a, a) == 1.0


def test_paired_bootstrap_detects_a_real_difference_and_not_a_null_one():
    rng = np.random.default_rng(0)
    gold = (rng.uniform(size=(300, 4)) < 0.4).astype(np.int8)
    good = gold.copy()
    good[rng.uniform(size=good.shape) < 0.05] ^= 1
    bad = gold.copy()
    bad[rng.uniform(size=bad.shape) < 0.25] ^= 1
    low, high, p = metrics.paired_bootstrap(gold, good, bad)
    assert low > 0 and p < 0.01
    low, high, p = metrics.paired_bootstrap(gold, good, good)
    assert low == high == 0 and p == 1.0


def test_compare_joins_cells_on_ids(tmp_path):
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"labels": ["a", "b"], "multi_label": False}))
    gold = [["a"], ["b"], ["a"], ["b"]] * 5
    pd.DataFrame({"id": [str(i) for i in range(20)], "gold": gold, "pred": gold}).to_parquet(tmp_path / "x.parquet")
    pd.DataFrame({"id": [str(i) for i in range(20)][::-1], "gold": gold[::-1],
                             "pred": [["a"]] * 20}).to_parquet(tmp_path / "y.parquet")
    result = metrics.compare(tmp_path / "x.parquet", tmp_path / "y.parquet", labels)
    assert result["test"] == "McNemar (exact)" and result["n"] == 20
    assert result["p_value"] == pytest.approx(2 * 0.5**10) and result["delta_ci_low"] > 0
    pd.DataFrame({"id": ["0"], "gold": [["a"]], "pred": [["a"]]}).to_parquet(tmp_path / "z.parquet")
    with pytest.raises(UserError, match="do not hold the same test texts"):
        metrics.compare(tmp_path / "x.parquet", tmp_path / "z.parquet", labels)


def test_records_merge_explicitly_and_drop_no_value():
    """train_info and predict_info both give peak_memory_mb (training's, prediction's): metrics.json keeps
    training's under the key and prediction's as predict_peak_memory_mb; a computed metric is never replaced."""
    computed = {"f1_micro": 0.9, "n": 10}
    merged = metrics.merge_records([
        ("train_info", {"peak_memory_mb": 900.0, "device": "cpu", "f1_micro": 0.1, "epochs_run": 3}),
        ("predict_info", {"peak_memory_mb": 400.0, "device": "cpu", "n": 99, "labels": ["a"]}),
    ], computed)
    assert merged == {"peak_memory_mb": 900.0, "device": "cpu", "epochs_run": 3, "predict_peak_memory_mb": 400.0}


def test_one_writer_caches_the_predictions_of_every_mode(tmp_path):
    """io.write_predictions for a classifier (first mode) and free generation: the parquet of each mode
    beside its info, the info naming the parquet's SHA-256, an invalid answer kept as no label."""
    from clsbench.io import sha256, write_predictions

    df = pd.DataFrame({"id": ["a", "b"], "labels": [["x"], ["y"]]})
    probs = np.array([[0.9, 0.1], [0.3, 0.7]])
    info = write_predictions(tmp_path, df, probs, metrics.label_lists(np.array([[1, 0], [0, 1]]), ["x", "y"]),
                             {"split": "test"})
    assert info["predictions_sha256"] == sha256(tmp_path / "predictions.parquet")
    assert [list(p) for p in pd.read_parquet(tmp_path / "predictions.parquet")["pred"]] == [["x"], ["y"]]
    info = write_predictions(tmp_path, df, None, [["x"], None], {"split": "test"}, "generate", ["x", "no idea"])
    table = pd.read_parquet(tmp_path / "predictions_generate.parquet")
    assert list(table["valid"]) == [True, False] and list(table["pred"][1]) == [] and info["invalid_output_rate"] == 0.5
    assert (tmp_path / "predict_info_generate.json").exists() and (tmp_path / "predict_info.json").exists()


def test_a_train_record_without_the_keys_every_cell_has_is_refused(tmp_path):
    """io.write_train_record, the one writer of train_info.json: approach, rank, seed and the parameter
    counts are in every cell's record, of their types (the tables read them); a record that lacks one
    or has another type is a bug, not written."""
    from clsbench.io import write_train_record

    with pytest.raises(ValueError, match=r"a train record without \['seed'\]"):
        write_train_record(tmp_path, {"approach": "zeroshot", "rank": 0, "trainable_params": 0, "total_params": 1})
    with pytest.raises(ValueError, match=r"with \['total_params'\] not of type \['int'\]"):
        write_train_record(tmp_path, {"approach": "zeroshot", "rank": 0, "seed": 1, "trainable_params": 0,
                                      "total_params": 1.5})
    assert not (tmp_path / "train_info.json").exists()
    write_train_record(tmp_path, {"approach": "zeroshot", "rank": 0, "seed": 42, "trainable_params": 0,
                                  "total_params": 1, "epochs_run": 0})
    assert json.loads((tmp_path / "train_info.json").read_text())["seed"] == 42
