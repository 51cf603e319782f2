"""Bad user data through dataset preparation (`clsbench.data.prepare`, source: files): every input
either loads correctly or stops with a UserError naming the file; nothing else escapes. Hand-written
cases first, then a hypothesis fuzz (derandomized, so every run tries the same inputs) of random
tables written as CSV / TSV / JSONL in several encodings, some of them cut or sprinkled with bytes."""
import csv
import io
import json
import re

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clsbench import UserError, data

LABELS = "abc"


def rows(n_per_label=12):
    return [{"text": f"text number {i} about {label}", "label": label} for label in LABELS for i in range(n_per_label)]


TWO_LABELS = [{"text": "a text about both a and b", "label": "a,b"}]  # multi-label data has such a row


def csv_bytes(records, encoding="utf-8", sep=","):
    return pd.DataFrame(records).to_csv(index=False, sep=sep).encode(encoding)


def jsonl_bytes(records):
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def prepare(tmp_path, name: str, raw: bytes, **spec):
    path = tmp_path / name
    path.write_bytes(raw)
    out = tmp_path / "out"
    data.prepare("fuzz", {"source": "files", "path": str(path), **spec}, out)
    splits, labels, multi = data.load_prepared(out)
    frame = pd.concat(splits.values())
    assert (frame["text"].str.len() > 0).all() and frame["id"].is_unique
    assert {label for row in frame["labels"] for label in row} <= set(labels)
    assert multi or (frame["labels"].str.len() == 1).all()
    return frame


QUOTED = 'a "quoted" word, a comma\nand a second line'
CASES = {  # name: (file name, bytes, extra spec, None = loads, else the expected error)
    "utf-8 BOM csv": ("d.csv", b"\xef\xbb\xbf" + csv_bytes(rows()), {}, None),
    "utf-8 BOM jsonl": ("d.jsonl", b"\xef\xbb\xbf" + jsonl_bytes(rows()), {}, None),
    "latin-1 declared": ("d.csv", csv_bytes(rows() + [{"text": "café crème", "label": "a"}], "latin-1"),
                         {"encoding": "latin-1"}, None),
    "latin-1 undeclared": ("d.csv", csv_bytes(rows() + [{"text": "café crème", "label": "a"}], "latin-1"), {},
                           r"not valid utf-8 \(invalid continuation byte at byte \d+\); set encoding: latin-1 in the dataset config"),
    "utf-16 undeclared": ("d.csv", csv_bytes(rows(), "utf-16"), {}, r"not valid utf-8 .*; set encoding: utf-16 in the dataset config"),
    "unknown encoding": ("d.csv", csv_bytes(rows()), {"encoding": "klingon"}, "unknown encoding 'klingon'"),
    "newlines and quotes": ("d.csv", csv_bytes(rows() + [{"text": QUOTED, "label": "b"}]), {}, None),
    "newlines and quotes tsv": ("d.tsv", csv_bytes(rows() + [{"text": QUOTED + "\tx", "label": "b"}], sep="\t"), {},
                                None),
    "unterminated quote": ("d.csv", csv_bytes(rows()) + b'"no end,a\n', {}, r"cannot be read with delimiter ',': unexpected end of data at line 38"),
    "empty label single": ("d.csv", csv_bytes(rows() + [{"text": "no label", "label": ""}]), {},
                           r"row 36 has 0 labels \(''\) but the dataset is single-label"),
    "empty label multi": ("d.csv", csv_bytes(rows() + TWO_LABELS + [{"text": "no label", "label": ""}]), {"multi_label": True},
                          None),
    "separator in a single label": ("d.csv", csv_bytes([{**r, "label": r["label"] + ",x"} for r in rows()]), {}, None),
    "separators only, multi": ("d.csv", csv_bytes(rows() + TWO_LABELS + [{"text": "commas", "label": " , ,"}]),
                               {"multi_label": True}, None),
    "huge text": ("d.csv", csv_bytes(rows() + [{"text": "word " * 300_000, "label": "c"}]), {}, None),
    "missing column": ("d.csv", csv_bytes([{"body": r["text"], "label": r["label"]} for r in rows()]), {},
                       r"column 'text' not found \(columns: body, label\)"),
    "empty file": ("d.csv", b"", {}, "the file is empty"),
    "header only": ("d.csv", b"text,label\n", {}, r"no data rows \(columns: text, label\)"),
    "too many fields": ("d.csv", csv_bytes(rows()) + b"a,b,c\n", {}, r"line 38 has 3 field\(s\), the header 2 with delimiter ',' \(a line break or quote inside"),
    "binary": ("d.csv", bytes(range(256)) * 8, {}, "not valid utf-8"),
    "mixed types jsonl": ("d.jsonl", jsonl_bytes(rows() + [{"text": 42, "label": 7}, {"text": "seven", "label": 7}]),
                          {}, None),
    "list as text": ("d.jsonl", jsonl_bytes(rows() + [{"text": ["a", "b"], "label": "a"}]), {},
                     r"column 'text' holds a list or object, not text, at row\(s\) 36"),
    "object as label": ("d.jsonl", jsonl_bytes(rows() + [{"text": "t", "label": {"x": 1}}]), {},
                        r"row 36 has label \{'x': 1\}; expected a label name or a list of names"),
    "null text": ("d.jsonl", jsonl_bytes(rows() + [{"text": None, "label": "a"}]), {},
                  r"1 empty text\(s\) at row\(s\) 36"),
    "numeric labels with a null": ("d.jsonl", jsonl_bytes([{**r, "label": LABELS.index(r["label"])} for r in rows()]
                                                          + [{"text": "x", "label": None}, {"text": "y", "label": [0, 1]}]),
                                   {"multi_label": True}, None),
    "JSON array, not JSONL": ("d.jsonl", json.dumps(rows()).encode(), {}, "is one JSON array"),
    "broken JSONL line": ("d.jsonl", jsonl_bytes(rows()) + b"{not json\n", {}, r"line 37 is not valid JSON \(Expecting property name"),
    "not parquet": ("d.parquet", b"PAR1 and then nothing", {}, "cannot be read as parquet"),
    "one row": ("d.csv", b"text,label\nhello,a\n", {}, "the val split is empty"),
    "multi-label, one label per row": ("d.csv", csv_bytes(rows()), {"multi_label": True},
                                       r"multi_label: true but no example has more than one label"),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_bad_input_loads_or_names_file_and_problem(tmp_path, case):
    name, raw, spec, error = CASES[case]
    if error is None:
        frame = prepare(tmp_path, name, raw, **spec)
        assert len(frame) >= len(rows())
        if "quotes" in case:
            assert frame["text"].str.startswith('a "quoted" word, a comma\nand a second line').any()
        if case == "numeric labels with a null":  # 0, 1, 2 (not 0.0, 1.0, 2.0) and no label for the null
            assert {label for row in frame["labels"] for label in row} == {"0", "1", "2"}
        return
    with pytest.raises(UserError) as err:
        prepare(tmp_path, name, raw, **spec)
    assert str(tmp_path / name) in str(err.value) and re.search(error, str(err.value)), str(err.value)


# ---------------------------------------------------------------- fuzz
TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40)
LABEL = st.sampled_from(list(LABELS) * 12 + ["a,b", "", " ", "b , c", "ä", '"q"', "x\ny", "NA"])
TABLE = st.lists(st.tuples(TEXT, LABEL), min_size=8, max_size=60).map(  # mostly distinct, non-empty texts
    lambda pairs: [{"text": f"row {i}: {text}" if i % 7 else text, "label": label}
                   for i, (text, label) in enumerate(pairs)])


@st.composite
def damaged(draw, raw: bytes) -> tuple[str, bytes]:
    how = draw(st.sampled_from(["none", "none", "cut", "bytes", "drop quote"]))
    if how == "cut" and raw:
        return how, raw[:draw(st.integers(0, len(raw) - 1))]
    if how == "bytes":
        at = draw(st.integers(0, len(raw)))
        return how, raw[:at] + draw(st.binary(min_size=1, max_size=8)) + raw[at:]
    if how == "drop quote" and b'"' in raw:
        return how, raw.replace(b'"', b"", 1)
    return "none", raw


@settings(max_examples=100, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(records=TABLE, fmt=st.sampled_from(["csv", "tsv", "jsonl"]),
       encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "latin-1"]), declared=st.booleans(),
       multi=st.booleans(), drop_empty=st.booleans(), draw=st.data())
def test_fuzzed_files_load_or_name_file_and_problem(tmp_path_factory, records, fmt, encoding, declared, multi,
                                                    drop_empty, draw):
    if fmt == "jsonl":
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    else:  # the csv module quotes every field holding a quote, separator, \r or \n
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, ["text", "label"], delimiter="\t" if fmt == "tsv" else ",")
        writer.writeheader()
        writer.writerows(records)
        text = buffer.getvalue()
    how, raw = draw.draw(damaged(text.encode(encoding, errors="replace")))
    path = tmp_path_factory.mktemp("fuzz") / f"d.{fmt}"
    intact = how == "none" and (declared or encoding.startswith("utf-8"))  # and read in its own encoding
    try:
        frame = prepare(path.parent, path.name, raw, multi_label=multi, on_empty_text="drop" if drop_empty else "error",
                        **({"encoding": encoding} if declared else {}))
    except UserError as err:
        assert str(path) in str(err)
        assert not (intact and re.search(r"cannot be read|not valid|field\(s\), the header", str(err))), str(err)
        return
    if intact:  # what loaded is what was written: every text is one of the (stripped) input texts
        written = {r["text"].encode(encoding, errors="replace").decode(encoding).strip() for r in records}
        assert set(frame["text"]) <= written
