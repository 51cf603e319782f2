"""SDPA against eager attention on this CPU, in bf16, at a training step's shapes (forward and
backward, batch 8) and an inference batch's (forward, batch 16), SmolLM2-135M's 9 heads of 64, causal:
milliseconds per call of one layer's attention, for each sequence length.

    python benchmarks/attention_cpu.py
    python benchmarks/attention_cpu.py --lengths 56 128 512 --threads 2

Eager is the attention transformers' ``attn_implementation="eager"`` computes (scores, mask, float32
softmax, values); SDPA is ``torch.nn.functional.scaled_dot_product_attention``, transformers' default.
"""
from __future__ import annotations

import argparse

import torch
from throughput import milliseconds_per_call


def sdpa(q, k, v, mask):
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def eager(q, k, v, mask):
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    return scores.masked_fill(~mask, float("-inf")).float().softmax(-1).to(q.dtype) @ v


def milliseconds(attention, batch: int, length: int, backward: bool, heads: int = 9, dim: int = 64) -> float:
    q, k, v = (torch.randn(batch, heads, length, dim, dtype=torch.bfloat16, requires_grad=backward)
               for _ in range(3))
    mask = torch.ones(length, length, dtype=torch.bool).tril()

    def call():
        out = attention(q, k, v, mask)
        if backward:
            out.sum().backward()

    return milliseconds_per_call(call)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[56, 128, 512, 1024])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("| tokens | training SDPA ms | training eager ms | inference SDPA ms | inference eager ms |\n|---|---|---|---|---|")
    for length in args.lengths:
        row = [milliseconds(f, 8, length, True) for f in (sdpa, eager)]
        row += [milliseconds(f, 16, length, False) for f in (sdpa, eager)]
        print(f"| {length} | " + " | ".join(f"{ms:.1f}" for ms in row) + " |", flush=True)


if __name__ == "__main__":
    main()
