import json

import numpy as np
import pandas as pd
import pytest
from conftest import USPTO

from clsbench import UserError, data, sources


def write_csv(path, rows, columns=("text", "label")):
    pd.DataFrame(rows, columns=list(columns)).to_csv(path, index=False)
    return str(path)


def labelled(n_per_label, labels=("a", "b", "c")):
    return [(f"text {label} {i}", label) for label in labels for i in range(n_per_label)]


def test_bbc_news_dedup_split_and_stats(bbc_small):
    stats = json.loads((bbc_small / "stats.json").read_text())
    assert stats["duplicates_removed"]["all"] == 98  # BBC News holds 98 exact duplicate articles
    assert [stats[s]["n"] for s in ("train", "val", "test")] == [60, 20, 30]
    splits, labels, multi = data.load_prepared(bbc_small)
    assert labels == ["business", "entertainment", "politics", "sports", "tech"] and not multi
    texts = [set(splits[s]["text"]) for s in ("train", "val", "test")]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])
    counts = splits["train"]["labels"].str[0].value_counts()
    assert counts.max() - counts.min() <= 4  # stratified: the caps keep class proportions


def test_split_is_deterministic_and_stratified():
    df = pd.DataFrame({"id": [str(i) for i in range(200)], "text": [f"t{i}" for i in range(200)],
                       "labels": [["x"] if i % 4 else ["y"] for i in range(200)]})
    a = data.split_frame(df, 0.1, 0.2, seed=7, multi_label=False)
    b = data.split_frame(df, 0.1, 0.2, seed=7, multi_label=False)
    assert [len(a[s]) for s in ("train", "val", "test")] == [140, 20, 40]
    assert all(a[s]["id"].tolist() == b[s]["id"].tolist() for s in a)
    assert (a["test"]["labels"].str[0] == "y").sum() == 10  # 25% of 40


def test_multilabel_iterative_stratification():
    rng = np.random.default_rng(0)
    names = list("ABCDE")
    rows = [sorted(set(rng.choice(names, size=rng.integers(1, 3), replace=True))) for _ in range(500)]
    df = pd.DataFrame({"id": [str(i) for i in range(500)], "text": [f"t{i}" for i in range(500)], "labels": rows})
    parts = data.split_frame(df, 0.1, 0.2, seed=1, multi_label=True)
    assert [len(parts[s]) for s in ("train", "val", "test")] == [350, 50, 100]
    full = pd.Series([label for r in rows for label in r]).value_counts(normalize=True)
    test = pd.Series([label for r in parts["test"]["labels"] for label in r]).value_counts(normalize=True)
    assert (full - test).abs().max() < 0.03


def test_derived_pairs_are_multilabel_with_distinct_topics(pairs_small):
    splits, labels, multi = data.load_prepared(pairs_small)
    assert multi and len(labels) == 5
    train = splits["train"]
    pairs = train[train["labels"].str.len() == 2]
    assert 0.2 < 1 - len(pairs) / len(train) < 0.4  # single_share 0.3
    assert all(a != b for a, b in pairs["labels"])
    assert all("\n\n" in t for t in pairs["text"])


def test_files_source_multilabel_separator(tmp_path):
    rows = [(f"doc {i}", "A|B" if i % 2 else "A") for i in range(40)] + [(f"doc b {i}", "B") for i in range(20)]
    spec = {"source": "files", "path": write_csv(tmp_path / "d.csv", rows), "multi_label": True, "label_separator": "|"}
    stats = data.prepare("mine", spec, tmp_path / "out")
    assert stats["labels"] == 2 and stats["train"]["multi_label_share"] > 0.2


def test_jsonl_with_list_labels_and_given_splits(tmp_path):
    for split, n in (("train", 30), ("test", 10)):
        pd.DataFrame({"body": [f"{split} {i}" for i in range(n)],
                      "tags": [["x", "y"] if i % 3 else ["y"] for i in range(n)]}).to_json(
            tmp_path / f"{split}.jsonl", orient="records", lines=True)
    spec = {"source": "files", "train": str(tmp_path / "train.jsonl"), "test": str(tmp_path / "test.jsonl"),
            "text_columns": ["body"], "label_column": "tags", "multi_label": True}
    stats = data.prepare("j", spec, tmp_path / "out")
    assert stats["test"]["n"] == 10 and stats["val"]["n"] == 3 and stats["train"]["n"] == 27
    assert stats["text_columns"] == ["body"]  # what clsbench.apply reads from a new file of this dataset


# ------------------------------------------------------------------ bad input
def test_missing_column_names_column_and_file(tmp_path):
    spec = {"source": "files", "path": write_csv(tmp_path / "d.csv", labelled(5), ("body", "label"))}
    with pytest.raises(UserError, match=r"column 'text' not found .*columns: body, label"):
        data.prepare("d", spec, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_empty_text_stops_or_drops(tmp_path):
    rows = labelled(10) + [("   ", "a")]
    spec = {"source": "files", "path": write_csv(tmp_path / "d.csv", rows)}
    with pytest.raises(UserError, match=r"1 empty text\(s\) at row\(s\) 30"):
        data.prepare("d", spec, tmp_path / "out")
    stats = data.prepare("d", {**spec, "on_empty_text": "drop"}, tmp_path / "out")
    assert sum(stats[s]["n"] for s in ("train", "val", "test")) == 30


def test_label_in_test_absent_from_train_stops_or_is_dropped(tmp_path):
    spec = {"source": "files", "train": write_csv(tmp_path / "tr.csv", labelled(10, "ab")),
            "test": write_csv(tmp_path / "te.csv", [("new doc", "zebra"), ("an a doc", "a")])}
    with pytest.raises(UserError, match=r"\['zebra'\] occur in test but never in train"):
        data.prepare("d", {**spec, "on_unseen_label": "error"}, tmp_path / "out")
    stats = data.prepare("d", spec, tmp_path / "out")  # default: drop; a single-label example goes with its label
    assert stats["test"]["n"] == 1
    assert stats["unseen_labels_dropped"]["test"]["labels"] == {"zebra": 1}
    assert stats["unseen_labels_dropped"]["test"]["examples_removed"] == 1


def long_tail_rows(seed=0, n_labels=64):
    """Multi-label texts with Zipf-distributed label frequencies; the last dozen labels have 1-3
    examples each; 40% of the texts carry a second, frequent label."""
    rng = np.random.default_rng(seed)
    labels = [f"l{i:02d}" for i in range(n_labels)]
    counts = np.maximum((300 / np.arange(1, n_labels + 1) ** 1.1).astype(int), 4)
    counts[-12:] = rng.integers(1, 4, 12)
    rows = []
    for label, count in zip(labels, counts):
        for k in range(count):
            second = labels[rng.integers(0, 5)] if rng.random() < 0.4 else label
            rows.append((f"document {label} {k}", ",".join(sorted({label, second}))))
    return rows


def test_long_tail_caps_and_val_carving_keep_every_label(tmp_path):
    rows = long_tail_rows()
    spec = {"source": "files", "multi_label": True, "label_separator": ",",
            "train": write_csv(tmp_path / "train.csv", rows),
            "test": write_csv(tmp_path / "test.csv", rows[::7] + [("unseen topic", "l05,zzz")]),
            "split": {"val": 0.15, "seed": 3}, "max_train": 120}
    stats = data.prepare("tail", spec, tmp_path / "out")
    source = pd.Series([x for _, labs in rows for x in labs.split(",")]).value_counts()
    assert len(source) >= 60 and (source <= 3).sum() >= 10  # the long tail the test is about
    train = pd.read_parquet(tmp_path / "out" / "train.parquet")
    in_train = {x for row in train["labels"] for x in row}
    assert set(source[source >= 2].index) <= in_train  # no label with 2+ source examples lost to val or the cap
    assert len(train) <= 120 + (source >= 2).sum()  # the cap, plus at most one moved example per label
    assert stats["unseen_labels_dropped"]["test"]["labels"] == {"zzz": 1}
    test = pd.read_parquet(tmp_path / "out" / "test.parquet")
    assert ["l05"] in [list(r) for r in test["labels"]]  # the example stays, without the unseen label
    labels = json.loads((tmp_path / "out" / "labels.json").read_text())["labels"]
    assert set(labels) == in_train


def test_single_file_split_keeps_labels_with_two_examples_in_train(tmp_path):
    rows = long_tail_rows(seed=1)
    spec = {"source": "files", "multi_label": True, "label_separator": ",", "path": write_csv(tmp_path / "all.csv", rows),
            "split": {"val": 0.15, "test": 0.15, "seed": 5}}
    data.prepare("tail", spec, tmp_path / "out")
    source = pd.Series([x for _, labs in rows for x in labs.split(",")]).value_counts()
    train = pd.read_parquet(tmp_path / "out" / "train.parquet")
    assert set(source[source >= 2].index) <= {x for row in train["labels"] for x in row}


def test_unknown_label_against_fixed_label_set(tmp_path):
    spec = {"source": "files", "path": write_csv(tmp_path / "d.csv", labelled(10)), "labels": ["a", "b"]}
    with pytest.raises(UserError, match=r"label\(s\) \['c'\] in the train split are not in the configured label set"):
        data.prepare("d", spec, tmp_path / "out")


def test_empty_dataset_after_filtering(tmp_path):
    spec = {"source": "files", "path": write_csv(tmp_path / "d.csv", [("", "a"), (" ", "b")]), "on_empty_text": "drop"}
    with pytest.raises(UserError, match="split is empty"):
        data.prepare("d", spec, tmp_path / "out")


def test_single_label_row_with_two_labels(tmp_path):
    path = tmp_path / "d.jsonl"
    pd.DataFrame({"text": ["one", "two"], "label": [["a"], ["a", "b"]]}).to_json(path, orient="records", lines=True)
    with pytest.raises(UserError, match=r"row 1 has 2 labels .* but the dataset is single-label"):
        data.prepare("d", {"source": "files", "path": str(path)}, tmp_path / "out")


def test_wrong_encoding_is_reported(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("text,label\ncaf\xe9 cr\xe8me,a\n".encode("latin-1"))
    with pytest.raises(UserError, match="not valid utf-8 .* set encoding"):
        sources.read_table(path, {})
    assert sources.read_table(path, {"encoding": "latin-1"})["text"][0] == "café crème"


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(UserError, match="data file not found"):
        sources.read_table(tmp_path / "nope.csv", {})
    (tmp_path / "d.xlsx").write_text("x")
    with pytest.raises(UserError, match="cannot tell the format"):
        sources.read_table(tmp_path / "d.xlsx", {})


def test_hub_source_offline_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(UserError, match="cannot load hub dataset 'someone/no-such-set'"):
        data.prepare("h", {"source": "hub", "hub_id": "someone/no-such-set"}, tmp_path / "out")


@pytest.mark.skipif(not USPTO.exists(), reason="../shared/data/uspto-ipc not present")
def test_uspto_ipc_through_generic_csv_source(tmp_path):
    spec = {"source": "files", "train": str(USPTO / "train.csv"), "val": str(USPTO / "val.csv"),
            "test": str(USPTO / "test.csv"), "text_columns": ["publication_title_claims", "application_type_abstract"],
            "label_column": "label", "multi_label": True, "label_separator": ","}
    stats = data.prepare("uspto-ipc", spec, tmp_path / "out")
    assert stats["labels"] == 8 and stats["multi_label"]
    assert stats["test"]["n"] == 698 and 5500 < stats["train"]["n"] <= 5584
    assert 0.3 < stats["train"]["multi_label_share"] < 0.45


# ------------------------------------------------------------------ labels that say the options do not fit the data
PIPE_JOINED = [(f"doc {i}", "business|politics" if i % 3 else "business") for i in range(30)] + \
              [(f"pol {i}", "politics") for i in range(15)]


@pytest.mark.parametrize("options, message", [
    ({}, r"label 'business\|politics' joins label names with '\|' \(1 such label\(s\)\) but the dataset is "
         r"single-label; set multi_label: true and label_separator: '\|'"),
    ({"multi_label": True}, r"label 'business\|politics' joins label names with '\|' .* but label_separator ',' "
                            r"splits no row; set label_separator: '\|'"),
])
def test_labels_joined_by_another_separator_stop_naming_the_option(tmp_path, options, message):
    spec = {"source": "files", "path": write_csv(tmp_path / "d.csv", PIPE_JOINED), **options}
    with pytest.raises(UserError, match=rf"^dataset 'd' \(.*d.csv\): {message}$"):
        data.prepare("d", spec, tmp_path / "out")
    stats = data.prepare("d", {**spec, "multi_label": True, "label_separator": "|"}, tmp_path / "out")
    assert stats["labels"] == 2 and stats["train"]["multi_label_share"] > 0.3


def test_multi_label_rows_that_all_join_unknown_names_stop(tmp_path):
    rows = [(f"doc {i}", ["a;b", "c;d", "a;d"][i % 3]) for i in range(30)]
    spec = {"source": "files", "path": write_csv(tmp_path / "d.csv", rows), "multi_label": True}
    with pytest.raises(UserError, match=r"joins label names with ';' \(3 such label\(s\)\) but label_separator ',' "
                                        r"splits no row; set label_separator: ';'"):
        data.prepare("d", spec, tmp_path / "out")


def test_multi_label_data_where_no_example_has_two_labels_stops(tmp_path):
    spec = {"source": "files", "path": write_csv(tmp_path / "d.csv", labelled(10, ("a", "b", "c"))), "multi_label": True}
    with pytest.raises(UserError, match=r"^dataset 'd' \(.*d.csv\): multi_label: true but no example has more than one label "
                                        r"\(label_separator ',' splits no row\); set multi_label: false, or "
                                        r"label_separator to the character that joins the label names$"):
        data.prepare("d", spec, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_single_label_names_with_a_slash_are_fine(tmp_path):
    rows = labelled(10, ("Sci/Tech", "World", "Sports"))
    stats = data.prepare("d", {"source": "files", "path": write_csv(tmp_path / "d.csv", rows)}, tmp_path / "out")
    assert stats["labels"] == 3


def test_labels_differing_only_in_case_stop_unless_folded_or_kept(tmp_path):
    rows = labelled(10, ("business", "Business", "sport", "SPORT ", "tech"))
    spec = {"source": "files", "path": write_csv(tmp_path / "d.csv", rows)}
    with pytest.raises(UserError, match=r"^dataset 'd' \(.*d.csv\): label names differ only in case: 'Business' / 'business'; "
                                        r"'SPORT' / 'sport' \(2 group\(s\)\); set labels_case: fold"):
        data.prepare("d", spec, tmp_path / "out")
    folded = data.prepare("d", {**spec, "labels_case": "fold"}, tmp_path / "out")
    # each label keeps its most frequent spelling (here a tie: the first in sort order), not lower case
    assert folded["labels"] == 3 and folded["train"]["label_counts"]["Business"] > folded["train"]["label_counts"]["tech"]
    assert set(folded["train"]["label_counts"]) == {"Business", "SPORT", "tech"}
    more = write_csv(tmp_path / "d2.csv", labelled(10, ("business", "business", "Business", "tech")))
    assert set(data.prepare("d", {"source": "files", "path": more, "labels_case": "fold"},
                            tmp_path / "out3")["train"]["label_counts"]) == {"business", "tech"}
    assert data.prepare("d", {**spec, "labels_case": "keep"}, tmp_path / "out2")["labels"] == 5


def test_single_class_data_stops_at_preparation(tmp_path):
    spec = {"source": "files", "path": write_csv(tmp_path / "d.csv", labelled(20, ("only",)))}
    with pytest.raises(UserError, match=r"the train split has 1 label name\(s\) \(\['only'\]\); a classifier needs "
                                        r"at least two"):
        data.prepare("d", spec, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ files: where a reading error is
def test_jsonl_line_that_does_not_parse_is_named_by_line_number(tmp_path):
    lines = [json.dumps({"text": f"doc {i}", "label": "ab"[i % 2]}) for i in range(9)]
    lines[6] = '{"text": "broken, "label": "a"}'
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"d.jsonl: line 7 is not valid JSON \(Expecting ',' delimiter at column 20\)"):
        data.prepare("d", {"source": "files", "path": str(tmp_path / "d.jsonl")}, tmp_path / "out")


def test_semicolon_csv_names_the_delimiter_option(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text;label\n" + "".join(f"doc {i};{'ab'[i % 2]}\n" for i in range(30)))
    spec = {"source": "files", "path": str(path)}
    with pytest.raises(UserError, match=r"d.csv: the header is one column \('text;label'\) with delimiter ','; "
                                        r"set delimiter: ';' in the dataset config"):
        data.prepare("d", spec, tmp_path / "out")
    assert data.prepare("d", {**spec, "delimiter": ";"}, tmp_path / "out")["labels"] == 2


def test_ids_without_an_id_column_name_the_split_and_row(tmp_path):
    spec = {"source": "files", "train": write_csv(tmp_path / "tr.csv", labelled(10)),
            "test": write_csv(tmp_path / "te.csv", [(f"unseen {t}", label) for t, label in labelled(2)])}
    data.prepare("d", spec, tmp_path / "out")
    splits, _, _ = data.load_prepared(tmp_path / "out")
    assert set(splits["test"]["id"]) == {f"test-{i}" for i in range(6)}
    assert all(i.startswith("train-") for s in ("train", "val") for i in splits[s]["id"])


def test_empty_texts_dropped_are_counted_in_stats(tmp_path, capsys):
    rows = labelled(10) + [("   ", "a"), ("", "b")]
    spec = {"source": "files", "path": write_csv(tmp_path / "d.csv", rows), "on_empty_text": "drop"}
    stats = data.prepare("d", spec, tmp_path / "out")
    assert stats["empty_texts_dropped"] == {"row": 2}
    assert "2 row(s) with an empty text dropped (on_empty_text: drop)" in capsys.readouterr().out
