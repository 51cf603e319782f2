"""Score mode against generate mode on one trained instruct (or zero-shot) cell: micro-F1 of each,
generate's invalid-output rate, inference samples/s of each and their ratio, on the same test texts
and the same loaded model. Prints a table and writes benchmarks/out/instruct_modes.csv.

    python benchmarks/instruct_modes.py results/bbc-news/smollm2-135m/instruct/r64/s42 [--n 160]
    python benchmarks/instruct_modes.py results/bbc-news/gemma-3-270m/zeroshot/r0/s42
    python benchmarks/instruct_modes.py <cell> --eval-batch-size 1      # the paper's inference batch
    python benchmarks/instruct_modes.py <cell> --set '{"inference_weights": "4bit"}'

Hyperparameters (text_tokens, eval batch size, threshold) come from the config the cell was run with.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import pandas as pd

from clsbench import grid, instruct, layout
from clsbench.io import read_json
from clsbench.metrics import evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cell", help="results/<dataset>/<model>/<instruct|zeroshot>/r<rank>/s<seed>")
    parser.add_argument("--config", default="config.yaml")
    parser.add_argument("--n", type=int, help="first N test texts only (default: all)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--eval-batch-size", type=int, help="inference batch (default: the config's)")
    parser.add_argument("--set", type=json.loads, default={}, help="further hyperparameters changed, as JSON")
    args = parser.parse_args()
    cell = Path(args.cell)
    key, results = layout.Cell.at(cell)
    approach = key.approach
    hp = grid.hparams(grid.load_config(args.config), approach, key.model, key.dataset)
    if args.eval_batch_size:
        hp["eval_batch_size"] = args.eval_batch_size
    hp.update(args.set)
    source = cell / "adapter" if approach == "instruct" else read_json(key.model_json(results))["path"]
    data_dir = key.data_dir(results)
    with tempfile.TemporaryDirectory() as tmp:
        if args.n:  # a smaller test split, same texts for both modes
            for f in data_dir.iterdir():
                Path(tmp, "data").mkdir(exist_ok=True)
                Path(tmp, "data", f.name).write_bytes(f.read_bytes())
            test = pd.read_parquet(data_dir / "test.parquet")[:args.n]
            test.to_parquet(Path(tmp, "data", "test.parquet"))
            data_dir = Path(tmp, "data")
        run = instruct.predict if approach == "instruct" else instruct.predict_zeroshot
        infos = run(str(source), str(data_dir), tmp, hp, threads=args.threads)
        rows = []
        for mode, info in infos.items():
            suffix = "" if mode == "score" else f"_{mode}"
            m = evaluate(Path(tmp) / f"predictions{suffix}.parquet", data_dir / "labels.json")
            rows.append({"cell": str(cell), "mode": mode, "n": info["n"], "f1_micro": m["f1_micro"],
                         "f1_macro": m["f1_macro"], "invalid_output_rate": info.get("invalid_output_rate"),
                         "ece": m.get("ece"), "samples_per_second": info["infer_samples_per_second"],
                         "wall_seconds": info["infer_wall_seconds"], "eval_batch_size": info["eval_batch_size"],
                         "device": info["device"]})
    table = pd.DataFrame(rows)
    speed = table.set_index("mode")["samples_per_second"]
    table["speed_vs_generate"] = table["samples_per_second"] / speed.get("generate", float("nan"))
    print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    out = Path("benchmarks/out/instruct_modes.csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, mode="a", header=not out.exists(), index=False)


if __name__ == "__main__":
    main()
