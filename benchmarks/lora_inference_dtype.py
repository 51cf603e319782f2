"""A trained LoRA cell's test predictions with its LoRA weights as peft loads them (float32) and cast
to bfloat16, the dtype its base computes in on a bf16 CPU: inference samples/s, the share of
predictions equal to the cell's cached ones and the largest probability difference, one Markdown row
per run, the two variants alternating.

    python benchmarks/lora_inference_dtype.py runs/tuned-slow/results/bbc-news/smollm2-135m/instruct/r64/s42
    python benchmarks/lora_inference_dtype.py runs/tuned-slow/results/bbc-news/smollm2-135m/head/r8/s42 --repeats 2

A loaded (or in-memory, clsbench.staging) LoRA model predicts without autocast, so peft casts each
bf16 activation to float32 for the adapter's matmuls and the result back; under the Trainer's
autocast, per-epoch validation ran them in bf16. Instruct cells are timed in score mode. The cell's
folder is not touched (predictions go to a temporary folder). Run nothing else on the machine meanwhile.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from clsbench import adapters, head, instruct, layout  # noqa: E402


def predict(cell: Path, lora_dtype: str) -> dict:
    """One test prediction of ``cell`` with its LoRA weights in ``lora_dtype`` ("as loaded" or "bfloat16")."""
    import torch

    load_peft = adapters.load_peft

    def load_cast(adapter_dir, load_base):
        model = load_peft(adapter_dir, load_base)
        if lora_dtype == "bfloat16":
            for name, p in model.named_parameters():
                if "lora_" in name:
                    p.data = p.data.to(torch.bfloat16)
        return model

    hp = json.loads((cell / "hparams.json").read_text())
    keys, results = layout.Cell.at(cell)
    data = keys.data_dir(results)
    out = Path(tempfile.mkdtemp(prefix="lora-dtype-"))
    adapters.load_peft = load_cast
    try:
        if keys.approach == "instruct":
            instruct.predict(str(cell / "adapter"), str(data), str(out), hp, 2, ("test",), ("score",))
        else:
            head.predict(str(cell / "adapter"), str(data), str(out), hp, 2, ("test",))
    finally:
        adapters.load_peft = load_peft
    info = json.loads((out / "predict_info.json").read_text())
    ours, cached = pd.read_parquet(out / "predictions.parquet"), pd.read_parquet(cell / "predictions.parquet")
    return {"lora_dtype": lora_dtype,
            "samples_per_second": info.get("infer_score_samples_per_second") or info["infer_samples_per_second"],
            "same_predictions": float(np.mean([str(a) == str(b) for a, b in zip(ours["pred"], cached["pred"])])),
            "max_prob_difference": float(np.abs(np.stack(ours["probs"]) - np.stack(cached["probs"])).max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cell", type=Path, help="a trained head or instruct cell folder (results/<dataset>/<model>/<approach>/r<rank>/s<seed>)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each variant, alternating")
    args = parser.parse_args()
    print("| run | LoRA weights | infer samples/s | predictions as cached | max abs. probability difference |")
    print("|---|---|---|---|---|")
    for run in range(args.repeats):
        for dtype in ("as loaded", "bfloat16"):
            r = predict(args.cell, dtype)
            print(f"| {run + 1} | {dtype} | {r['samples_per_second']:.2f} | {r['same_predictions']:.1%} | "
                  f"{r['max_prob_difference']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
