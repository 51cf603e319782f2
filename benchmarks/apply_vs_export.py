"""Use a cell on held-back texts two ways and print what a user gets from each.

    python benchmarks/apply_vs_export.py --cell results/bbc-news/smollm2-135m/head/r8/s42 [--config config.yaml]

1. ``clsbench.apply`` on the cell (4-bit base + adapter, the cell's own predict code) over the cell's
   test texts written to a CSV: texts/s, and how many labels differ from the cell's cached predictions;
2. ``clsbench.export`` of the cell, then ``transformers.pipeline("text-classification")`` on the export
   over the same texts (same batch size): texts/s, max |Δprob| against the cache, decisions changed.
Run from the results folder's parent (where ``results/`` is).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", required=True)
    parser.add_argument("--config", help="for a cell without hparams.json")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    import torch
    from transformers import pipeline

    from clsbench import apply, export, layout
    from clsbench.io import read_json

    cell = Path(args.cell)
    torch.set_num_threads(args.threads)
    data_dir = layout.data_dir_of(cell)
    labels = read_json(data_dir / "labels.json")["labels"]
    cached = pd.read_parquet(cell / "predictions.parquet")
    test = pd.read_parquet(data_dir / "test.parquet").set_index("id").loc[cached["id"]].reset_index()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        test[["id", "text"]].to_csv(tmp / "held_back.csv", index=False)
        t0 = time.perf_counter()
        out = apply.label(cell, tmp / "held_back.csv", tmp / "labelled.csv", args.config, threads=args.threads)
        apply_s = time.perf_counter() - t0
        same = sum(a == "|".join(b) for a, b in zip(out["predicted"], cached["pred"]))
        print(f"apply (adapter): {len(out)} texts in {apply_s:.1f} s = {len(out) / apply_s:.2f} texts/s "
              f"(model load included); labels equal to the cached predictions: {same}/{len(out)}")

        t0 = time.perf_counter()
        check = export.export(cell, tmp / "export", config_path=args.config, threads=args.threads)
        print(f"export: {time.perf_counter() - t0:.1f} s (with its check); export_check: {json.dumps(check)}")
        hp = json.loads((tmp / "export" / "README.md").read_text().split("```json")[1].split("```")[0])
        multi = read_json(data_dir / "labels.json")["multi_label"]
        t0 = time.perf_counter()
        clf = pipeline("text-classification", model=str(tmp / "export"), top_k=None,
                       function_to_apply="sigmoid" if multi else "softmax")
        load_s = time.perf_counter() - t0
        texts = list(test["text"])
        clf(texts[:args.batch_size], batch_size=args.batch_size, truncation=True, max_length=hp["max_length"])
        t0 = time.perf_counter()
        rows = clf(texts, batch_size=args.batch_size, truncation=True, max_length=hp["max_length"])
        run_s = time.perf_counter() - t0
    probs = np.array([[{s["label"]: s["score"] for s in row}[name] for name in labels] for row in rows])
    ref = np.stack(cached["probs"])
    changed = int((probs.argmax(1) != ref.argmax(1)).sum()) if not multi else int(((probs >= 0.5) != (ref >= 0.5)).any(1).sum())
    print(f"pipeline (export): load {load_s:.1f} s, {len(texts)} texts in {run_s:.1f} s = {len(texts) / run_s:.2f} texts/s "
          f"(batch {args.batch_size}); max |dprob| {np.abs(probs - ref).max():.2e}; decisions changed {changed}/{len(texts)}")


if __name__ == "__main__":
    main()
