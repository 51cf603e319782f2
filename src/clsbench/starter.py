"""Write a starting grid for your own labelled file: columns detected, data problems fixed, sized to
the machine.

    python -m clsbench.starter --data tickets.csv --out my.yaml            # CPU: about 30 minutes
    python -m clsbench.starter --data tickets.csv --out my.yaml --gpu 1b   # one GPU: 1b, 3b or 8b

The file is read as the data job reads it; every problem whose message names a fix (encoding,
delimiter, labels differing in case, labels joined by a separator, empty texts) is fixed in the
written config, with a comment saying so. The text and label columns are detected (``--text-columns``
and ``--label-column`` override). The CPU grid is TF-IDF, the MiniLM encoder, and SmolLM2-135M with a
classification head and instruction-tuned, with the training and validation caps chosen so that
clsbench.check's estimate on this machine is about ``--minutes`` (default 30). The GPU grid trades the
SmolLM2 cells for a 1B, 3B or 8B Llama from the hub (paper Table 1 settings, texts up to 512 tokens),
with the memory and time per cell the paper measured (Appendix D) in its comments.
Then the written config is checked (clsbench.check) and the command that runs it printed.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path

import pandas as pd
import yaml

from . import UserError, check, data, sources
from .io import atomic_path, run_cli

LABEL_NAMES = ("label", "labels", "category", "categories", "class", "topic", "tag", "tags", "intent", "queue",
               "target", "y")
ID_NAMES = ("id", "uid", "ticket_id", "doc_id")
MAX_LABELS = 200  # a column with more distinct values is not a label column
MIN_TRAIN_CAP = 40  # training texts below which the caps are not lowered further
TEST_CAP = 200  # test texts of the CPU grid: the verdict's interval rests on them
CPU_WORDS, CPU_TOKENS = 32, 48  # the CPU grid's text: first 32 words, at ~1.46 tokens per word
REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "config.yaml"
# One GPU: the Llama of each size the paper measured (Appendix D: check.paper_rate), its parameters.
GPU_MODELS = {"1b": ("meta-llama/Llama-3.2-1B", 1.24e9), "3b": ("meta-llama/Llama-3.2-3B", 3.21e9),
              "8b": ("meta-llama/Llama-3.1-8B", 8.03e9)}
NF4_BYTES_PER_PARAM = 0.5  # 4-bit weights (the embeddings and norms, kept in 16 bits, add a little)


def read_fixed(path: Path) -> tuple[pd.DataFrame, dict, list[str]]:
    """The file as the data job reads it, with the reader settings its problems named applied:
    (table, those settings, the problems met)."""
    table, reader, said = check.with_fixes(lambda spec: sources.read_table(path, spec), {})
    if table is None:
        raise UserError(f"{said[-1]} (the starter could not fix this one)")
    return table, reader, said


def words(column: pd.Series) -> float:
    return float(column.fillna("").astype(str).str.split().str.len().mean())


def detect_columns(df: pd.DataFrame) -> tuple[list[str], str, str | None]:
    """(text columns in file order, label column, id column or None), from names and values: the label
    column has few distinct short values, text columns are the remaining columns of several words."""
    n = len(df)
    names = {c.lower(): c for c in df.columns}
    id_column = next((names[k] for k in ID_NAMES if k in names and df[names[k]].is_unique), None)
    candidates = []
    for col in df.columns:
        if col == id_column:
            continue
        distinct = df[col].nunique(dropna=True)
        if 2 <= distinct <= min(MAX_LABELS, max(2, n // 2)) and words(df[col]) <= 6:
            candidates.append((col.lower() not in LABEL_NAMES, distinct, col))
    if not candidates:
        raise UserError(f"no column looks like labels (2 to {MAX_LABELS} distinct short values) among "
                        f"{', '.join(map(str, df.columns))}; pass --label-column")
    label = min(candidates)[2]
    texts = [c for c in df.columns if c not in (label, id_column) and words(df[c]) >= 2]
    if not texts:
        raise UserError(f"no column of texts besides '{label}' among {', '.join(map(str, df.columns))}; "
                        "pass --text-columns")
    return texts, label, id_column


def cpu_grid(key: str, dataset: dict) -> dict:
    """TF-IDF, the MiniLM encoder, SmolLM2-135M head and instruct, with config.yaml's settings."""
    shipped = yaml.safe_load(SHIPPED.read_text())
    models = {m: shipped["models"][m] for m in ("smollm2-135m", "minilm-l6")}
    cut = {"max_length": CPU_TOKENS}
    return {"seeds": [42], "threads": shipped.get("threads", 2), "datasets": {key: dataset}, "models": models,
            "approaches": {"tfidf": {},
                           "encoder": {"models": ["minilm-l6"], "hparams": dict(cut)},
                           "head": {"models": ["smollm2-135m"], "ranks": [8], "hparams": dict(cut)},
                           "instruct": {"models": ["smollm2-135m"], "ranks": [64], "hparams": {"text_tokens": CPU_TOKENS}}}}


def gpu_grid(key: str, dataset: dict, size: str) -> dict:
    """TF-IDF, a BERT-style encoder and a Llama of ``size`` (head r16, instruct r64) for one GPU."""
    hub_id = GPU_MODELS[size][0]
    slug = hub_id.split("/")[1].lower().replace(".", "-")
    table1 = {"max_length": 512, "batch_size": 8, "grad_accum": 1, "max_epochs": 10, "patience": 2}
    return {"seeds": [42, 43, 44], "datasets": {key: dataset},
            "models": {slug: {"source": "hub", "hub_id": hub_id},
                       "deberta-v3-base": {"source": "hub", "hub_id": "microsoft/deberta-v3-base"}},
            "approaches": {"tfidf": {},
                           "encoder": {"models": ["deberta-v3-base"], "hparams": {**table1, "learning_rate": 3.0e-5}},
                           "head": {"models": [slug], "ranks": [16], "hparams": {**table1, "learning_rate": 2.0e-4}},
                           "instruct": {"models": [slug], "ranks": [64],
                                        "hparams": {"text_tokens": 512, "batch_size": 4, "grad_accum": 2,
                                                    "max_epochs": 5, "patience": 2, "learning_rate": 2.0e-4}}}}


def fit_caps(config: dict, key: str, stats: dict, minutes: float) -> dict:
    """``max_train`` / ``max_val`` / ``max_test`` so that the grid's estimate here is about ``minutes``:
    the test split capped at ``TEST_CAP`` texts (what the verdict's interval rests on), then training
    and validation scaled down by the same factor (validation kept at 50 texts where there are)."""
    from . import grid

    probe = yaml.safe_load(yaml.safe_dump(config))
    cells = grid.validated_cells(probe)
    rates = check.measured_rates()
    sizes = {s: stats[s]["n"] for s in data.SPLITS}
    caps = {"test": min(sizes["test"], TEST_CAP)}

    def scaled(scale: float) -> dict:
        return {"train": max(1, round(sizes["train"] * scale)),
                "val": max(round(sizes["val"] * scale), min(50, sizes["val"])), **caps}

    def total(scale: float) -> float:
        n = scaled(scale)
        rows = check.estimate(probe, cells, {key: {**stats, **{s: {**stats[s], "n": n[s]} for s in data.SPLITS}}}, rates)
        return sum(r["tune"] + r["train"] + r["predict"] for r in rows)

    scale = 1.0
    while total(scale) > minutes * 60 and sizes["train"] * scale > MIN_TRAIN_CAP:
        scale *= 0.9
    return {f"max_{s}": n for s, n in scaled(scale).items() if n < sizes[s]}


def comment_block(lines: list[str]) -> str:
    return "".join(f"# {line}\n" if line else "#\n" for line in lines)


def starter(path: Path, out: Path, gpu: str | None = None, minutes: float = 30, text_columns: list[str] | None = None,
            label_column: str | None = None) -> str:
    """Write the starter config for ``path`` to ``out``; returns its text."""
    df, reader, said = read_fixed(path)
    detected = detect_columns(df) if not (text_columns and label_column) else (text_columns, label_column, None)
    texts, label, id_column = (text_columns or detected[0], label_column or detected[1], detected[2])
    key = re.sub(r"[^a-z0-9-]+", "-", path.stem.lower()).strip("-") or "data"
    where = os.path.relpath(path.resolve(), out.resolve().parent)  # relative paths resolve from the config's folder
    dataset = {"source": "files", "path": where, "text_columns": list(texts), "label_column": label,
               **({"id_column": id_column} if id_column else {}), **reader}
    if not gpu:
        dataset["max_words"] = CPU_WORDS
    with tempfile.TemporaryDirectory(prefix="clsbench-starter-") as scratch:
        checked = check.dataset_problems(key, dataset, Path(scratch) / key)
    if checked.stats is None:
        raise UserError(f"{checked.problems[-1]} (the starter could not fix this one)")
    dataset.update(checked.fixes)
    said += checked.problems  # each fixed by the settings it names
    config = gpu_grid(key, dataset, gpu) if gpu else cpu_grid(key, dataset)
    if not gpu:
        dataset.update(fit_caps(config, key, checked.stats, minutes))
    head = [f"Starter grid for {path} (python -m clsbench.starter); edit freely, then:",
            f"  python -m clsbench.check {out}",
            f"  snakemake --configfile {out} --cores all --resources gpu=1",
            "", f"Detected: text column(s) {', '.join(texts)}; label column {label}"
            + (f"; id column {id_column}" if id_column else "") + f"; {checked.stats['labels']} labels, "
            + ("multi" if checked.stats["multi_label"] else "single") + "-label."]
    if said:
        head += ["Fixed for this file (from the data checks):"] + [f"  {line}" for line in said]
    if gpu:
        hub_id, params = GPU_MODELS[gpu]
        train_s, infer_s = (check.paper_rate("head", hub_id.split("/")[1], f"{stage}_samples_per_s")
                            for stage in ("train", "infer"))
        n = {s: checked.stats[s]["n"] for s in data.SPLITS}
        epochs = config["approaches"]["head"]["hparams"]["max_epochs"]
        cell_min = (epochs * n["train"] / train_s + (epochs * n["val"] + n["val"] + n["test"]) / infer_s) / 60
        head += ["", f"One GPU: {hub_id} ({params / 1e9:.1f}B parameters; gated on the hub: accept its licence and",
                 f"log in). NF4 weights take about {params * NF4_BYTES_PER_PARAM / 1e9:.1f} GB; the paper trained every "
                 "model up to 8B on one 24 GB L4.",
                 f"The paper's L4 trained this size's head at {train_s} texts/s and labelled {infer_s} texts/s (texts "
                 "up to 1024 tokens,",
                 f"Appendix D): a head cell here takes at most about {cell_min:.0f} min ({epochs} epochs of "
                 f"{n['train']} texts), the instruct cell longer.",
                 "docs/gpu.md has the GPU checks and commands."]
    else:
        head += ["", f"CPU-sized: each text's first {CPU_WORDS} words; caps chosen for about {minutes:.0f} minutes on this",
                 "machine by clsbench.check's estimate (raise them on a faster machine or a GPU)."]
    text = comment_block(head) + yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
    with atomic_path(out) as tmp:
        tmp.write_text(text)
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a starting grid for your own labelled file.")
    parser.add_argument("--data", required=True, type=Path, help="CSV / TSV / JSONL / Parquet with texts and labels")
    parser.add_argument("--out", default="my.yaml", type=Path, help="the config to write (default my.yaml)")
    parser.add_argument("--gpu", choices=sorted(GPU_MODELS), help="a grid for one GPU with a Llama of this size")
    parser.add_argument("--minutes", type=float, default=30, help="CPU grid: the time to fit (default 30)")
    parser.add_argument("--text-columns", nargs="+", help="default: detected")
    parser.add_argument("--label-column", help="default: detected")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    args = parser.parse_args(argv)
    if args.out.exists() and not args.force:
        raise UserError(f"--out {args.out}: exists; pass --force to replace it")
    starter(args.data, args.out, args.gpu, args.minutes, args.text_columns, args.label_column)
    print(f"wrote {args.out}; checking it:")
    sys.stdout.flush()
    code = check.report([str(args.out)])
    sys.exit(code)


if __name__ == "__main__":
    run_cli(main)
