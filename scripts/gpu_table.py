"""The one-GPU sizing table of docs/gpu.md, from the paper's measurements (src/clsbench/reference/
paper_results.csv, Appendix D: one NVIDIA L4, NF4 QLoRA, WIPO texts up to 1024 tokens).

    python scripts/gpu_table.py        # prints the Markdown table (tests/test_docs.py checks docs/gpu.md holds it)
"""
from __future__ import annotations

from clsbench.check import paper_rate
from clsbench.starter import GPU_MODELS, NF4_BYTES_PER_PARAM

INSTRUCT_NAME = {"Llama-3.1-8B": "Llama-3.1-8B-Instruct"}  # the paper's 8B instruct row is the Instruct model


def markdown() -> str:
    lines = ["| model | NF4 weights | head: train / label 1,000 texts | instruct: train / label 1,000 texts |",
             "|---|---|---|---|"]
    for hub_id, params in GPU_MODELS.values():
        model = hub_id.split("/")[1]
        cells = []
        for approach, name in (("head", model), ("instruct", INSTRUCT_NAME.get(model, model))):
            train, infer = (paper_rate(approach, name, f"{stage}_samples_per_s") for stage in ("train", "infer"))
            cells.append(f"{1000 / train / 60:.0f} min / {1000 / infer / 60:.0f} min")
        lines.append(f"| {model} ({params / 1e9:.1f}B) | {params * NF4_BYTES_PER_PARAM / 1e9:.1f} GB | "
                     f"{cells[0]} | {cells[1]} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown())
