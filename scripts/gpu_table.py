"""The one-GPU sizing table of docs/gpu.md, from the paper's measurements (src/clsbench/reference/
paper_results.csv, Appendix D: one NVIDIA L4, NF4 QLoRA, WIPO texts up to 1024 tokens).

    python scripts/gpu_table.py        # prints the Markdown table (tests/test_docs.py checks docs/gpu.md holds it)
"""
from __future__ import annotations

import csv
from pathlib import Path

REFERENCE = Path(__file__).resolve().parents[1] / "src" / "clsbench" / "reference" / "paper_results.csv"
SIZES = {"Llama-3.2-1B": 1.24e9, "Llama-3.2-3B": 3.21e9, "Llama-3.1-8B": 8.03e9}
INSTRUCT_NAME = {"Llama-3.1-8B": "Llama-3.1-8B-Instruct"}  # the paper's 8B instruct row is the Instruct model
NF4_BYTES_PER_PARAM = 0.5


def rates() -> dict:
    table = {}
    for row in csv.DictReader(REFERENCE.open()):
        if row["table"] == "appendix_d" and row["dataset"] == "WIPO" and row["rank"] in ("8", "64"):
            table[(row["approach"], row["model"], row["metric"])] = float(row["value"])
    return table


def markdown() -> str:
    r = rates()
    lines = ["| model | NF4 weights | head: train / label 1,000 texts | instruct: train / label 1,000 texts |",
             "|---|---|---|---|"]
    for model, params in SIZES.items():
        cells = []
        for approach, name in (("head", model), ("instruct", INSTRUCT_NAME.get(model, model))):
            train, infer = (r[(approach, name, f"{stage}_samples_per_s")] for stage in ("train", "infer"))
            cells.append(f"{1000 / train / 60:.0f} min / {1000 / infer / 60:.0f} min")
        lines.append(f"| {model} ({params / 1e9:.1f}B) | {params * NF4_BYTES_PER_PARAM / 1e9:.1f} GB | "
                     f"{cells[0]} | {cells[1]} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown())
