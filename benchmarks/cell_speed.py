"""One cell trained and predicted under several settings on this machine: train and inference
samples/s, model GFLOP/s and their fraction of the machine's measured matmul peak in the dtype the
cell computed in, and test micro-F1, one Markdown row per setting.

    python benchmarks/cell_speed.py runs/onelo/results/bbc-news/smollm2-135m/head/r8/s42 \\
        --variant 'fp32+torch={"precision": "fp32", "lora_dropout_rng": "torch"}' \\
        --variant 'bf16+torch={"precision": "bf16", "lora_dropout_rng": "torch"}' \\
        --variant 'bf16+numpy={"precision": "bf16", "lora_dropout_rng": "numpy"}'

Each setting is the cell's own hparams.json with the variant's keys changed, trained by
``python -m clsbench.cell train`` in a fresh process into a temporary folder (the cell's folder is not
touched), its test predictions made by that training job (clsbench.staging). FLOPs are counted as
the cells count them (clsbench.throughput: 2N per token forward, 4N for QLoRA training, 6N for full
fine-tuning, plus attention); the peak is a 2048 x 2048 product (``benchmarks/throughput.py``'s
``matmul_peak``). Settings run one after another: run nothing else on the machine meanwhile.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput import matmul_peak  # noqa: E402

from clsbench import layout, metrics, staging  # noqa: E402
from clsbench.io import read_json  # noqa: E402


def variant(text: str) -> tuple[str, dict]:
    name, _, changes = text.partition("=")
    return name, json.loads(changes or "{}")


def run(cell_dir: Path, changes: dict, out: Path, threads: int) -> dict:
    cell, results = layout.Cell.at(cell_dir)
    hp = {**read_json(cell_dir / "hparams.json"), **changes}
    subprocess.run([sys.executable, "-m", "clsbench.cell", "train", "--approach", cell.approach, "--model-json",
                    str(cell.model_json(results)), "--data-dir", str(cell.data_dir(results)), "--out-dir", str(out),
                    "--rank", str(cell.rank), "--seed", str(cell.seed), "--hparams", json.dumps(hp),
                    "--threads", str(threads)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    staged = out / staging.STAGED
    train, infer = read_json(out / "train_info.json"), read_json(staged / "predict_info.json")
    f1 = metrics.evaluate(staged / "predictions.parquet", cell.data_dir(results) / "labels.json")
    return {"dtype": train["dtype"], "train_sps": train["train_samples_per_second"],
            "train_gflops": train["train_model_tflop"] * 1e3 / train["train_seconds"],
            "infer_sps": infer["infer_samples_per_second"],
            "infer_gflops": infer["infer_model_tflop"] * 1e3 / infer["infer_seconds"], "f1": f1["f1_micro"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cell", type=Path, help="a trained cell's folder of a run (its hparams.json is the base)")
    parser.add_argument("--variant", action="append", type=variant, required=True,
                        help="NAME=JSON: hyperparameters changed for this setting")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    peak = {"float32": matmul_peak("fp32", "cpu"), "bfloat16": matmul_peak("bf16", "cpu")}
    print(f"matmul peak on {args.threads} threads: fp32 {peak['float32'] / 1e9:.0f} GFLOP/s, "
          f"bf16 {peak['bfloat16'] / 1e9:.0f} GFLOP/s")
    print("| setting | dtype | train samples/s | train GFLOP/s (of peak) | infer samples/s | infer GFLOP/s (of peak) "
          "| test micro-F1 |\n|---|---|---|---|---|---|---|")
    for name, changes in args.variant:
        with tempfile.TemporaryDirectory() as tmp:
            r = run(args.cell, changes, Path(tmp) / "cell", args.threads)
        p = peak[r["dtype"]] / 1e9
        print(f"| {name} | {r['dtype']} | {r['train_sps']:.2f} | {r['train_gflops']:.0f} ({r['train_gflops'] / p:.0%}) "
              f"| {r['infer_sps']:.2f} | {r['infer_gflops']:.0f} ({r['infer_gflops'] / p:.0%}) | {r['f1']:.3f} |",
              flush=True)


if __name__ == "__main__":
    main()
