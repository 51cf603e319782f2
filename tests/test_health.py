"""Broken and unfinished cells are flagged, told in one line, and never recommended (clsbench.health)."""
import json

import numpy as np
import pandas as pd
import pytest
from conftest import TFIDF_HP, TINY_FROZEN_HP

from clsbench import UserError, apply, best, frozen, health, metrics, tables, tfidf

LABELS = list("abcde")


def one_hot(classes) -> np.ndarray:
    return np.eye(len(LABELS), dtype=np.int8)[np.asarray(classes)]


def flags_of(gold, pred, multi=False, invalid=None) -> list[str]:
    return [f["flag"] for f in health.prediction_flags(gold, pred, LABELS, multi, invalid)]


def test_a_cell_that_learned_the_task_has_no_flag():
    gold = one_hot(np.arange(100) % 5)
    pred = gold.copy()
    pred[:10] = one_hot(np.zeros(10, int))  # 90% right
    assert flags_of(gold, pred) == []


def test_one_answer_for_every_text_is_degenerate_and_says_which():
    gold = one_hot(np.arange(100) % 5)
    found = health.prediction_flags(gold, one_hot(np.full(100, 2)), LABELS, False)
    assert [f["flag"] for f in found] == ["one_class", "below_majority"]
    assert found[0]["detail"] == "'c' for 100% of texts" and "learning_rate" in found[0]["cause"]
    assert health.is_degenerate(found)


def test_one_answer_is_not_flagged_where_the_gold_answers_are_as_uniform():
    gold = one_hot(np.r_[np.zeros(97, int), np.ones(3, int)])  # 97% 'a': answering 'a' is right, not broken
    pred = one_hot(np.r_[np.zeros(99, int), np.ones(1, int)])
    assert "one_class" not in flags_of(gold, pred)


def test_no_label_for_most_texts_names_the_threshold_or_the_answer_format():
    gold = np.zeros((40, 5), np.int8)
    gold[np.arange(40), np.arange(40) % 5] = 1
    gold[np.arange(40), (np.arange(40) + 1) % 5] = 1
    found = health.prediction_flags(gold, np.zeros_like(gold), LABELS, True)
    assert found[0]["flag"] == "no_label" and "threshold" in found[0]["cause"]
    invalid = np.ones(40, bool)  # a prompting cell whose answers name no label
    found = health.prediction_flags(gold, np.zeros_like(gold), LABELS, True, invalid)
    assert "answer format" in found[0]["cause"]


def test_below_the_best_constant_answer_is_degenerate():
    gold = one_hot(np.r_[np.zeros(60, int), np.arange(40) % 4 + 1])  # 60% 'a'
    pred = one_hot(np.r_[np.ones(60, int), np.arange(40) % 4 + 1])  # right on the minority, wrong on 'a': 0.40
    found = health.prediction_flags(gold, pred, LABELS, False)
    assert [f["flag"] for f in found] == ["below_majority"]
    assert "0.400 ≤ 0.600 of always answering 'a'" in found[0]["detail"]


def test_far_below_tfidf_and_undertrained():
    assert health.tfidf_flag(0.70, 0.80) is None  # within 0.10
    assert health.tfidf_flag(0.69, 0.80)["flag"] == "far_below_tfidf"
    assert health.training_flags({"epochs_run": 3, "best_epoch": 3})[0]["flag"] == "undertrained"
    assert health.training_flags({"epochs_run": 5, "best_epoch": 3}) == []
    assert health.training_flags({}) == []  # TF-IDF, zero-shot: nothing trained over epochs


def make_cell(root, model, approach, seed, val, test, val_flags=(), train=None):
    cell = root / "results" / "d" / model / approach / "r0" / f"s{seed}"
    (cell / "val").mkdir(parents=True)
    (cell / "val" / "metrics.json").write_text(json.dumps({"f1_micro": val, "n": 20, "flags": list(val_flags)}))
    (cell / "metrics.json").write_text(json.dumps({"f1_micro": test, "n": 50, **(train or {})}))
    return str(cell)


def test_best_never_picks_a_configuration_with_a_degenerate_seed_and_lists_why(tmp_path):
    collapsed = health.prediction_flags(one_hot(np.arange(20) % 5), one_hot(np.zeros(20, int)), LABELS, False)
    cells = [make_cell(tmp_path, "m", "head", 42, 0.95, 0.95), make_cell(tmp_path, "m", "head", 43, 0.20, 0.2, collapsed),
             make_cell(tmp_path, "e", "encoder", 42, 0.90, 0.90, train={"epochs_run": 3, "best_epoch": 3}),
             make_cell(tmp_path, "tfidf", "tfidf", 42, 0.85, 0.85)]
    chosen = best.select(cells)
    assert chosen["approach"] == "encoder" and chosen["flags"][0]["flag"] == "undertrained"
    assert [c["approach"] for c in chosen["configurations"]] == ["encoder", "tfidf"]
    assert chosen["configurations"][0]["undertrained"] is True
    (excluded,) = chosen["excluded"]
    assert (excluded["approach"], [c["seed"] for c in excluded["cells"]]) == ("head", [43])
    assert [f["flag"] for f in excluded["cells"][0]["flags"]] == ["one_class", "below_majority", "far_below_tfidf"]


def test_best_excludes_a_cell_far_below_tfidf_on_validation(tmp_path):
    cells = [make_cell(tmp_path, "m", "zeroshot", 42, 0.30, 0.30), make_cell(tmp_path, "tfidf", "tfidf", 42, 0.80, 0.8)]
    chosen = best.select(cells)
    assert chosen["approach"] == "tfidf"
    assert chosen["excluded"][0]["cells"][0]["flags"][0]["flag"] == "far_below_tfidf"


def test_best_names_no_cell_when_every_cell_is_degenerate_and_apply_refuses_it(tmp_path, capsys):
    collapsed = health.prediction_flags(one_hot(np.arange(20) % 5), one_hot(np.zeros(20, int)), LABELS, False)
    cell = make_cell(tmp_path, "m", "head", 42, 0.2, 0.2, collapsed)
    best.main(["--cells", cell, "--out", str(tmp_path / "best.json")])
    record = json.loads((tmp_path / "best.json").read_text())
    assert record["cell"] is None and record["excluded"][0]["cells"][0]["seed"] == 42
    out = capsys.readouterr().out
    assert "NO RECOMMENDATION: every configuration of dataset 'd' has a degenerate seed" in out
    assert "excluded " in out and "DEGENERATE: 'a' for 100% of texts (one_class)" in out
    with pytest.raises(UserError, match="best.json: names no cell .* or pass --cell"):
        apply.main(["--best", str(tmp_path / "best.json"), "--input", "x.csv", "--output", "y.csv"])


def test_a_cell_forced_to_collapse_is_flagged_in_its_log_tables_and_best(tmp_path, tiny_model, pairs_small, capsys):
    """A real cell (frozen 4-bit LLM + head, multi-label pairs) whose threshold no probability reaches
    predicts no label for any text; evaluation flags it, the log says so in one line, the tables mark
    it and best.json picks TF-IDF instead, listing the cell as excluded."""
    hp = {**TINY_FROZEN_HP, "max_epochs": 2, "threshold": 0.999}
    cell = tmp_path / "results" / "pairs-small" / "tiny-llama" / "frozen" / "r0" / "s1"
    frozen.train(str(tiny_model), str(pairs_small), str(cell), rank=0, seed=1, hp=hp, threads=2)
    frozen.predict(str(cell / "adapter"), str(pairs_small), str(cell), hp, threads=2, splits=("test", "val"))
    base = tmp_path / "results" / "pairs-small" / "tfidf" / "tfidf" / "r0" / "s1"
    # 60 training texts: at 0.5 TF-IDF itself predicts no label for 90% of texts (flagged); at 0.2 it is sound
    tfidf.fit(str(pairs_small), str(base), seed=1, hp={**TFIDF_HP, "min_df": 1, "threshold": 0.2})
    for folder in (cell, base):
        for split_dir, extra in ((folder, ["train_info.json", "predict_info.json"]), (folder / "val", ["predict_info.json"])):
            metrics.main(["--predictions", str(split_dir / "predictions.parquet"), "--labels",
                          str(pairs_small / "labels.json"), "--out", str(split_dir / "metrics.json"),
                          "--extra", *[str(split_dir / name) for name in extra]])
    log = capsys.readouterr().out.splitlines()
    flagged = [line for line in log if "DEGENERATE" in line]
    assert len(flagged) == 2  # test and validation metrics of the collapsed cell, one line each
    assert flagged[0].startswith(f"{cell / 'metrics.json'}: DEGENERATE: no label for 100% of texts (no_label)")
    assert "likely cause: no label reaches the threshold" in flagged[0]
    assert json.loads((cell / "metrics.json").read_text())["degenerate"] is True
    assert json.loads((base / "metrics.json").read_text())["flags"] == []

    df = tables.collect([cell / "metrics.json", base / "metrics.json"])
    assert df.set_index("approach").loc["frozen", "flags"].startswith("no_label; below_majority")
    assert "†" in tables.paper_layout(df).set_index("Model").loc["tiny-llama", "pairs-small"]

    chosen = best.select([cell, base])
    assert chosen["approach"] == "tfidf"
    assert chosen["excluded"][0]["approach"] == "frozen"
    assert pd.read_parquet(cell / "predictions.parquet")["pred"].map(len).sum() == 0


def test_a_prompting_cell_is_told_its_prompt_not_its_learning_rate_is_the_likely_cause():
    gold = one_hot(np.arange(100) % 5)
    found = health.prediction_flags(gold, one_hot(np.full(100, 2)), LABELS, False, trained=False)
    assert found[0]["flag"] == "one_class" and found[0]["cause"] == health.UNTRAINED_CAUSE
    assert all("learning_rate" not in f["cause"] for f in found)
    assert metrics._trained("results/d/m/zeroshot/r0/s42/val/predictions.parquet", {}) is False
    assert metrics._trained("results/d/m/head/r8/s42/val/predictions.parquet", {}) is True
    assert metrics._trained("anything", {"trainable_params": 0}) is False


def test_the_f1_table_says_why_cells_are_undertrained():
    import pandas as pd

    from clsbench import tables

    df = pd.DataFrame({"_dir": ["a", "a", "b", "c", "d"], "epochs_run": [3, 3, 3, 5, None],
                       "undertrained": [True, True, True, False, False]})  # a: two modes of one cell; d: TF-IDF
    note = tables.undertrained_note(df)
    assert "2 of 3 cells trained over epochs" in note and "(3)" in note and "max_epochs" in note
    assert tables.undertrained_note(df.assign(undertrained=False)) == ""
