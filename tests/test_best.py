"""clsbench.best: the best cell of a dataset is chosen on validation, never on test."""
import json

import pytest

from clsbench import UserError, best


def make_cell(root, model, approach, rank, seed, val, test, speed=10.0):
    cell = root / "results" / "data1" / model / approach / f"r{rank}" / f"s{seed}"
    (cell / "val").mkdir(parents=True)
    (cell / "val" / "metrics.json").write_text(json.dumps({"f1_micro": val, "n": 20}))
    (cell / "metrics.json").write_text(json.dumps({"f1_micro": test, "f1_macro": test - 0.01, "n": 50,
                                                   "infer_samples_per_second": speed}))
    return str(cell)


def test_the_configuration_with_the_best_mean_validation_f1_wins_not_the_best_test_f1(tmp_path):
    cells = [make_cell(tmp_path, "m", "head", 8, 42, 0.80, 0.70), make_cell(tmp_path, "m", "head", 8, 43, 0.84, 0.71),
             make_cell(tmp_path, "m", "instruct", 64, 42, 0.90, 0.60), make_cell(tmp_path, "m", "instruct", 64, 43, 0.70, 0.95),
             make_cell(tmp_path, "e", "encoder", 0, 42, 0.79, 0.99)]
    chosen = best.select(cells)
    # head's mean 0.82 beats instruct's 0.80 (whose best seed alone has 0.90) and the encoder's test 0.99
    assert (chosen["approach"], chosen["seed"], chosen["val_f1_micro"]) == ("head", 43, 0.84)
    assert chosen["test"]["f1_micro"] == 0.71
    assert [c["approach"] for c in chosen["configurations"]] == ["head", "instruct", "encoder"]
    assert chosen["configurations"][0]["val_f1_micro_mean"] == pytest.approx(0.82)


def test_a_tie_goes_to_the_faster_configuration(tmp_path):
    cells = [make_cell(tmp_path, "m", "head", 8, 42, 0.8, 0.7, speed=5.0),
             make_cell(tmp_path, "tfidf", "tfidf", 0, 42, 0.8, 0.6, speed=500.0)]
    assert best.select(cells)["approach"] == "tfidf"


def test_a_cell_without_validation_predictions_is_named(tmp_path):
    cell = make_cell(tmp_path, "m", "head", 8, 42, 0.8, 0.7)
    (tmp_path / "results/data1/m/head/r8/s42/val/metrics.json").unlink()
    with pytest.raises(UserError, match="val/metrics.json: missing"):
        best.select([cell])


def test_a_tuned_threshold_cell_that_wins_in_sample_loses_after_cross_fitting(tmp_path):
    """Thresholds tuned on 30 validation texts of pure noise score 0.41 on those texts; fitted on the
    other folds they score 0.29 on each held-out fold. A sound cell at a fixed threshold (0.35) wins."""
    import numpy as np
    import pandas as pd

    from clsbench.thresholds import tune_thresholds

    labels = ["a", "b", "c", "d"]
    rng = np.random.default_rng(0)
    gold = rng.random((30, 4)) < 0.15
    probs = rng.random((30, 4)) * 0.6
    thresholds = tune_thresholds(probs, gold.astype(int))
    pred = probs >= thresholds
    in_sample = 2 * (gold & pred).sum() / (2 * (gold & pred).sum() + (~gold & pred).sum() + (gold & ~pred).sum())
    tuned = make_cell(tmp_path, "m", "head", 8, 42, float(in_sample), 0.5)
    rows = lambda m: [[lb for lb, on in zip(labels, row) if on] for row in m]  # noqa: E731
    pd.DataFrame({"id": range(30), "gold": rows(gold), "pred": rows(pred), "probs": list(probs)}).to_parquet(
        f"{tuned}/val/predictions.parquet")
    metrics = json.loads(open(f"{tuned}/metrics.json").read())
    metrics["thresholds"] = dict(zip(labels, thresholds.tolist()))
    open(f"{tuned}/metrics.json", "w").write(json.dumps(metrics))
    fixed = make_cell(tmp_path, "e", "encoder", 0, 42, 0.35, 0.4)

    assert in_sample == pytest.approx(0.41, abs=0.005)  # would beat 0.35 if scored on its own fitting texts
    chosen = best.select([tuned, fixed])
    assert chosen["approach"] == "encoder"
    ranked = {c["approach"]: c for c in chosen["configurations"]}
    assert ranked["head"]["val_f1_micro_mean"] == pytest.approx(0.294, abs=0.005)
    assert "cross-fitted" in chosen["selected_by"]


def test_best_json_says_how_far_the_choice_is_ahead_with_a_seed_aware_interval(tmp_path):
    """The chosen configuration (validation 0.80 on both seeds) against the runner-up (0.70 and 0.50):
    the margin is the mean of the per-seed differences, its interval resamples seeds then texts, and
    a runner-up whose seeds disagree this much leaves an interval wider than either text-only one."""
    import numpy as np
    import pandas as pd

    labels = ["a", "b"]
    (tmp_path / "results/data/data1").mkdir(parents=True)
    (tmp_path / "results/data/data1/labels.json").write_text(json.dumps({"labels": labels, "multi_label": False}))
    gold = [labels[i % 2] for i in range(100)]

    def cell(model, approach, rank, seed, right):
        path = make_cell(tmp_path, model, approach, rank, seed, right / 100, 0.5)
        pred = [g if i < right else labels[1 - labels.index(g)] for i, g in enumerate(gold)]
        pd.DataFrame({"id": range(100), "gold": [[g] for g in gold], "pred": [[p] for p in pred],
                      "probs": [np.array([0.9, 0.1] if p == "a" else [0.1, 0.9]) for p in pred]}).to_parquet(
            f"{path}/val/predictions.parquet")
        return path

    cells = [cell("m", "head", 8, 1, 80), cell("m", "head", 8, 2, 80),
             cell("e", "encoder", 0, 1, 70), cell("e", "encoder", 0, 2, 50)]
    chosen = best.select(cells)
    runner = chosen["runner_up"]
    assert chosen["approach"] == "head" and runner["approach"] == "encoder"
    assert runner["margin"] == pytest.approx(0.2) and runner["per_seed"] == "s1 +0.100 s2 +0.300"
    low, high = runner["margin_ci95"]
    assert low < 0.1 and high > 0.3 and runner["training_variance"] == "resampled (2 seeds)"
    assert best.select(cells[:2])["runner_up"] is None  # one configuration: nothing to be ahead of


@pytest.mark.parametrize("record", [{"n": 20}, {"f1_micro": None, "n": 20}, {"f1_micro": "0.8", "n": 20}])
def test_a_validation_record_without_a_numeric_f1_is_named_with_the_fix(tmp_path, record):
    cell = make_cell(tmp_path, "m", "head", 8, 42, 0.8, 0.7)
    (tmp_path / "results/data1/m/head/r8/s42/val/metrics.json").write_text(json.dumps(record))
    with pytest.raises(UserError, match=r"val/metrics.json: f1_micro is .*, not a number; evaluate the cell again: "
                                        r"snakemake --forcerun evaluate_val -- .*/val/metrics.json$"):
        best.select([cell])
