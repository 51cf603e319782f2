"""The LoRA dropout of one head training step on this CPU, by way of drawing the mask: milliseconds
for the forward calls of a step (7 projections x 30 layers, SmolLM2-135M's widths, bf16 inputs of a
batch of 8 x 56 tokens) and the backward multiplication by the mask.

    python benchmarks/dropout_cpu.py
    python benchmarks/dropout_cpu.py --tokens 448 --threads 2 --seconds 5

``torch``: ``torch.nn.Dropout``; ``numpy``: :class:`clsbench.dropout.NumpyDropout` as the cells use it.
"""
from __future__ import annotations

import argparse

import torch
from throughput import milliseconds_per_call

from clsbench.dropout import NumpyDropout

WIDTHS = [576] * 6 + [1536]  # q, k, v, o, gate, up take the hidden width; down the MLP's


def step_milliseconds(drop: torch.nn.Module, tokens: int, layers: int, seconds: float) -> float:
    inputs = [torch.randn(tokens, w, dtype=torch.bfloat16, requires_grad=True) for w in WIDTHS]
    drop.train()

    def step():
        for _ in range(layers):
            for x in inputs:
                drop(x).backward(torch.ones_like(x))

    return milliseconds_per_call(step, min_run_time=seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=8 * 56)
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=3, help="timing per setting, after a warm-up step")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--p", type=float, default=0.05)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("| dropout | ms per training step |\n|---|---|")
    for name, drop in (("torch", torch.nn.Dropout(args.p)), ("numpy", NumpyDropout(args.p))):
        print(f"| {name} | {step_milliseconds(drop, args.tokens, args.layers, args.seconds):.0f} |", flush=True)


if __name__ == "__main__":
    main()
