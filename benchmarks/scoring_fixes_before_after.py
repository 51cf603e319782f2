"""Scoring of cached cells by the code before the scoring fixes (git 1e2f2b3) and by today's.

    python benchmarks/scoring_fixes_before_after.py invalid [results]
        generate-mode micro-F1, accuracy and invalid-answer rate of every cached generate cell: before,
        an unparseable answer was an empty prediction (a miss, not a false positive) and a multi-label
        answer naming only unknown labels was valid; after, both are wrong answers.
    python benchmarks/scoring_fixes_before_after.py score results/<pairs dataset>/<model>/instruct/r64/s42
        multi-label score-mode micro-F1 of one trained instruct cell with the old scorer (its "add a
        label" event ended in a bare closing quote) on the same adapter and prompts, beside the cell's
        cached score and generate micro-F1. Runs the model (minutes on a CPU).

Prints one line per cell; figures go to reports/README.md.
"""
from __future__ import annotations

import argparse
import glob
import json
import subprocess
import time
import types
from pathlib import Path

import numpy as np
import pandas as pd

from clsbench import instruct, layout, metrics, prompting, prompts
from clsbench.data import load_prepared
from clsbench.runtime import device_setup

BEFORE = "1e2f2b3"


def old_module(name: str, **attrs) -> types.ModuleType:
    """``clsbench.<name>`` as it was at :data:`BEFORE`, importable beside today's (the helpers it
    imported from ``clsbench.head`` then live in ``clsbench.runtime`` / ``clsbench.metrics`` /
    ``clsbench.adapters`` now)."""
    from clsbench import adapters, head, runtime
    from clsbench import metrics as metrics_now

    for then, now in (("_check_finite", runtime.check_finite), ("_peak_memory_mb", runtime.peak_memory_mb),
                      ("decide", metrics_now.decide), ("ADAPTER_BASE", adapters.ADAPTER_BASE),
                      ("save_adapter", adapters.save_adapter)):
        setattr(head, then, now)
    for moved in ("count_parameters", "device_setup", "eval_timer", "finite_loss_guard", "optimizer_name",
                  "quantization_config", "run_key"):
        setattr(head, moved, getattr(runtime, moved))
    src = subprocess.run(["git", "show", f"{BEFORE}:src/clsbench/{name}.py"], capture_output=True, text=True,
                         check=True).stdout
    module = types.ModuleType(f"clsbench._before_{name}")
    module.__package__ = "clsbench"
    module.__dict__.update(attrs)
    exec(compile(src, f"{BEFORE}/{name}.py", "exec"), module.__dict__)
    return module


def invalid(root: str) -> None:
    old_metrics, old_prompts = old_module("metrics"), old_module("prompts")
    for path in sorted(glob.glob(f"{root}/*/*/*/r*/s*/predictions_generate.parquet")):
        cell = Path(path).parent
        meta = json.loads((layout.data_dir_of(cell) / "labels.json").read_text())
        labels, multi = meta["labels"], meta["multi_label"]
        df = pd.read_parquet(path)
        gold = [list(g) for g in df["gold"]]
        figures = {}
        for tag, parse_module in (("before", old_prompts), ("after", prompts)):
            if multi:
                parsed = [parse_module.parse_multi(t, labels) for t in df["generated"]]
            else:
                parsed = [parse_module.parse_single(t, labels) for t in df["generated"]]
                parsed = [None if p is None else [labels[p]] for p in parsed]
            bad = np.array([p is None for p in parsed])
            pred = [[] if p is None else [x for x in p if x in labels] for p in parsed]
            m = (old_metrics.classification_metrics(gold, pred, labels, multi) if tag == "before"
                 else metrics.classification_metrics(gold, pred, labels, multi, invalid=bad))
            acc = m.get("accuracy", m.get("subset_accuracy"))
            figures[tag] = f"micro-F1 {m['f1_micro']:.3f}, accuracy {acc:.3f}, invalid {bad.mean():.3f}"
        print(f"{cell}: before {figures['before']} | after {figures['after']}")


def score(cell: str, threads: int) -> None:
    cell = Path(cell)
    old = old_module("instruct", prompts=old_module("prompts"))
    splits, labels, multi = load_prepared(layout.data_dir_of(cell))
    if not multi:
        raise SystemExit(f"{cell}: a multi-label cell is needed")
    info = json.loads((cell / "predict_info.json").read_text())
    hp = {"text_tokens": info["text_tokens_limit"], "quantization": "nf4", "double_quant": True,
          "label_delimiter": ", ", "chat_template": False}
    h = prompting.PromptHparams(eval_batch_size=16, **hp)
    env = device_setup(threads, None)
    model, tok = instruct.load_for_inference(cell / "adapter", h, env)
    enc = prompting.Encoder(tok, labels, multi, h)
    rows = [enc.prompt_ids(text) for text in splits["test"]["text"]]
    old_enc = old.Encoder(tok, labels, multi, {**hp, "max_length": enc.max_length})
    t0 = time.perf_counter()
    probs = old.score_multi(model, old_enc, rows, 0.5, 16, env["device"])
    seconds = time.perf_counter() - t0
    gold = [list(g) for g in splits["test"]["labels"]]
    pred = [[labels[i] for i in np.flatnonzero(p >= 0.5)] for p in probs]
    before = metrics.classification_metrics(gold, pred, labels, True)["f1_micro"]
    after = json.loads((cell / "metrics.json").read_text())["f1_micro"]
    generate = json.loads((cell / "metrics_generate.json").read_text())["f1_micro"]
    print(f"{cell}: score micro-F1 before {before:.3f} (old scorer, {seconds:.0f} s), after {after:.3f}; "
          f"generate {generate:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("invalid").add_argument("root", nargs="?", default="results")
    s = sub.add_parser("score")
    s.add_argument("cell")
    s.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    invalid(args.root) if args.cmd == "invalid" else score(args.cell, args.threads)


if __name__ == "__main__":
    main()
