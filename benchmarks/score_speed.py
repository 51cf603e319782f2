"""Score-mode speed of the untrained instruct model on a prepared dataset's test texts: texts/s, and
the probabilities saved for comparing two versions of the code.

    python benchmarks/score_speed.py runs/tuned/results bbc-news-pairs --texts 64 --save /tmp/new.npy
    PYTHONPATH=/path/to/old/src python benchmarks/score_speed.py runs/tuned/results bbc-news-pairs --save /tmp/old.npy
    python benchmarks/score_speed.py runs/tuned/results bbc-news-pairs --compare /tmp/old.npy /tmp/new.npy

``results``: a run's results folder with ``models/smollm2-135m`` and ``data/<dataset>`` prepared.
The cost does not depend on the weights, so the base model scores (zero-shot prompts); a multi-label
dataset with few label sets is scored as marginals (clsbench.scoring.score_marginal). One warm-up
batch first; batch 16.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results")
    parser.add_argument("dataset")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--texts", type=int, default=64)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--quantization", default="nf4")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--save", help="write the probabilities here (.npy)")
    parser.add_argument("--compare", nargs=2, metavar="NPY", help="only compare two saved probability files")
    args = parser.parse_args()
    if args.compare:
        a, b = (np.load(f) for f in args.compare)
        print(f"max |difference| {np.abs(a - b).max():.2g}, decisions at 0.5 that differ: "
              f"{int(((a >= 0.5) != (b >= 0.5)).sum())} of {a.size}")
        return

    from clsbench import instruct, prompting, scoring
    from clsbench.data import load_prepared
    from clsbench.io import read_json
    from clsbench.runtime import device_setup

    h = prompting.PromptHparams(text_tokens=80, eval_batch_size=16, quantization=args.quantization, threshold=0.5,
                                precision=args.precision)
    env = device_setup(args.threads, args.precision)
    model_json = f"{args.results}/models/{args.model}/model.json"
    model, tok = instruct.load_for_inference(read_json(model_json)["path"], h, env)
    splits, labels, multi = load_prepared(f"{args.results}/data/{args.dataset}")
    enc = prompting.Encoder(tok, labels, multi, h, train_labels=splits["train"]["labels"])
    rows = [enc.prompt_ids(t) for t in splits["test"]["text"][:args.texts]]
    scoring.run_mode("score", model, enc, rows[:16], h, env)  # warm-up
    start = time.perf_counter()
    probs, _, _ = scoring.run_mode("score", model, enc, rows, h, env)
    print(f"{args.dataset}, {scoring.label_probability(enc) or 'single-label'}, {env['compute_dtype']}, "
          f"{args.quantization}: {len(rows) / (time.perf_counter() - start):.2f} texts/s")
    if args.save:
        np.save(args.save, probs)


if __name__ == "__main__":
    main()
