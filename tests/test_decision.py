"""The decision card: the recommendation first, with its seed-aware certainty and cost (clsbench.decision)."""
import json

import pandas as pd
import pytest
from test_claims import accuracy_mask, make_data, write_cell

from clsbench import best, decision


def add_val_and_cost(metrics_file, val, train_seconds, speed, flags=()):
    cell = metrics_file.parent
    (cell / "val").mkdir()
    (cell / "val" / "metrics.json").write_text(json.dumps({"f1_micro": val, "n": 40, "flags": []}))
    record = json.loads(metrics_file.read_text())
    record.update(train_wall_seconds=train_seconds, infer_samples_per_second=speed, peak_memory_mb=900.0,
                  flags=list(flags), f1_macro=record["f1_micro"])
    metrics_file.write_text(json.dumps(record))
    return str(cell)


@pytest.fixture
def grid_run(tmp_path, monkeypatch):
    """Head (three seeds that agree), instruct (three seeds that disagree) and TF-IDF on one dataset."""
    monkeypatch.chdir(tmp_path)
    make_data(tmp_path, "news")
    files, cells = [], []
    for seed, acc_instruct in zip((1, 2, 3), (0.95, 0.70, 0.85)):
        head = write_cell(tmp_path, "news", "head", seed, accuracy_mask(200, 0.85, 0))
        cells.append(add_val_and_cost(head, 0.90, 120.0, 20.0))
        instruct = write_cell(tmp_path, "news", "instruct", seed, accuracy_mask(200, acc_instruct, seed), rank=64)
        cells.append(add_val_and_cost(instruct, 0.86, 300.0, 5.0,
                                      [{"flag": "undertrained", "detail": "", "cause": ""}]))
        files += [head, instruct]
    tfidf = write_cell(tmp_path, "news", "tfidf", 42, accuracy_mask(200, 0.7, 9), model="tfidf", rank=0)
    cells.append(add_val_and_cost(tfidf, 0.75, 0.5, 2000.0))
    files.append(tfidf)
    (tmp_path / "results/news/best.json").write_text(json.dumps(best.select(cells)))
    return tmp_path, files


def test_the_card_opens_with_the_validation_choice_and_its_certainty_on_test(grid_run):
    root, files = grid_run
    decision.main(["--best", "results/news/best.json", "--out-dir", "out", "--figures", "figs",
                   "--", *map(str, files)])
    md = (root / "out/decision.md").read_text()
    assert "## news: use Classification head (r=8) · m" in md
    rows = pd.read_csv(root / "out/decision.csv").set_index("approach")
    assert rows["p_best"].sum() == pytest.approx(1.0)
    assert rows.loc["head", "recommended"] and rows.loc["head", "train_minutes"] == pytest.approx(2.0)
    assert rows.loc["head", "seconds_per_1000_texts"] == pytest.approx(50.0)
    assert rows.loc["instruct", "flags"] == "undertrained"
    # instruct's seeds disagree (0.95 / 0.70 / 0.85): its interval is wider than the head's, whose agree
    width = rows["test_ci_high"] - rows["test_ci_low"]
    assert width["instruct"] > 1.5 * width["head"]
    assert "Against the runner-up on validation, Instruction tuning (r=64) · m: Δ test micro-F1 +0.017" in md
    assert (root / "figs/decision_news.png").stat().st_size > 10_000


def test_one_seed_says_training_variance_is_not_measured(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_data(tmp_path, "news")
    head = write_cell(tmp_path, "news", "head", 1, accuracy_mask(200, 0.85, 0))
    tfidf = write_cell(tmp_path, "news", "tfidf", 42, accuracy_mask(200, 0.8, 9), model="tfidf", rank=0)
    cells = [add_val_and_cost(head, 0.9, 60.0, 10.0), add_val_and_cost(tfidf, 0.8, 0.5, 1000.0)]
    record = best.select(cells)
    card = decision.card(decision.collect([head, tfidf]), record, tmp_path / "results" / "data")
    assert card["one_seed"] and "training variance not measured" in decision.markdown(card, record)


def test_a_cell_that_reused_its_chosen_trial_costs_the_tuning_once(tmp_path, monkeypatch):
    """Tuned: 'train min / cell' is the trials' training plus the cell's own; a first seed that copied
    the chosen trial adds nothing (its training is one of the trials), a further seed adds its own."""
    monkeypatch.chdir(tmp_path)
    make_data(tmp_path, "news")
    head = write_cell(tmp_path, "news", "head", 1, accuracy_mask(200, 0.85, 0))
    tfidf = write_cell(tmp_path, "news", "tfidf", 42, accuracy_mask(200, 0.8, 9), model="tfidf", rank=0)
    cells = [add_val_and_cost(head, 0.9, 600.0, 10.0), add_val_and_cost(tfidf, 0.8, 0.5, 1000.0)]
    (head.parents[1] / "tuned.json").write_text(json.dumps({"chosen_trial": 1, "hparams": {}, "tuning_seconds": 1800.0,
                                                            "trials": [{}, {}, {}]}))
    record = json.loads(head.read_text())
    head.write_text(json.dumps({**record, "reused_trial": "results/news/m/head/r8/tune/t1/s1"}))
    card = decision.card(decision.collect([head, tfidf]), best.select(cells), tmp_path / "results" / "data")
    row = next(r for r in card["rows"] if r["approach"] == "head")
    assert row["train_minutes"] == pytest.approx(30.0)  # the three trials, not 30 + the copied 10
