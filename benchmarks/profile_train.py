"""Where a Trainer cell's training time goes: torch.profiler over a few optimizer steps of the cell's
own training code (head, encoder, instruct), with the cell's hyperparameters, model and data.

    python benchmarks/profile_train.py runs/bf16-check/results/bbc-news/smollm2-135m/head/r8/s42
    python benchmarks/profile_train.py <cell> --precision fp32 --steps 10 --rows 25
    python benchmarks/profile_train.py <cell> --set '{"lora_dropout_rng": "torch"}'

Trains one epoch of the cell into a temporary folder (its own folder is not touched), profiles steps
``--skip`` + 1 to ``--skip`` + ``--steps`` (CPU activities; CUDA too on a GPU) and prints the
samples/s of the profiled steps, the ops with the most self time, and that time grouped by kind
(matrix products, dropout's random numbers, attention, dtype copies, bitsandbytes' 4-bit and 8-bit
kernels, the rest). The profiler itself slows the steps (about a third on the 2-core CPU), and not
evenly: it inflated SDPA's CPU attention kernel and the page faults of freshly allocated memory, two
shares that levers built on them did not recover without it (docs/throughput.md, "Two levers the
profiler showed"). A share says where to look; confirm a gain with ``benchmarks/cell_speed.py``. The profiling callback is added by
wrapping ``clsbench.training.callbacks`` in this process only.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from clsbench import approaches, layout, training  # noqa: E402
from clsbench.io import read_json  # noqa: E402

KINDS = {  # op name fragment -> kind (the first match wins)
    "bernoulli": "dropout random numbers", "dropout": "dropout random numbers",
    "attention": "attention", "aten::mm": "matrix products", "aten::bmm": "matrix products",
    "aten::addmm": "matrix products", "aten::linear": "matrix products",
    "bitsandbytes": "bitsandbytes kernels", "copy_": "dtype copies", "_to_copy": "dtype copies",
}


def kind(op: str) -> str:
    return next((k for fragment, k in KINDS.items() if fragment in op), "other")


def profiler_callback(skip: int, steps: int, batch: int, rows: int, by_shape: str | None = None):
    import torch
    from transformers import TrainerCallback

    class Profile(TrainerCallback):
        prof, start = None, 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == skip and self.prof is None:
                acts = [torch.profiler.ProfilerActivity.CPU]
                if torch.cuda.is_available():
                    acts.append(torch.profiler.ProfilerActivity.CUDA)
                self.prof = torch.profiler.profile(activities=acts, record_shapes=by_shape is not None)
                self.prof.__enter__()
                self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if self.prof is not None and state.global_step == skip + steps:
                self.prof.__exit__(None, None, None)
                wall = time.perf_counter() - self.start
                events = self.prof.key_averages()
                total = sum(e.self_cpu_time_total for e in events)
                print(f"\n{steps} optimizer steps of {batch} texts: {wall:.1f} s, {steps * batch / wall:.2f} samples/s "
                      "under the profiler\n")
                print(events.table(sort_by="self_cpu_time_total", row_limit=rows))
                if by_shape:
                    shaped = [e for e in self.prof.key_averages(group_by_input_shape=True) if e.key == by_shape]
                    print(f"{by_shape} by input shapes (self CPU ms, calls):")
                    for e in sorted(shaped, key=lambda e: -e.self_cpu_time_total)[:rows]:
                        print(f"  {e.self_cpu_time_total / 1e3:9.1f} {e.count:7d}  {e.input_shapes}")
                by_kind: dict[str, float] = {}
                for e in events:
                    by_kind[kind(e.key)] = by_kind.get(kind(e.key), 0.0) + e.self_cpu_time_total
                print("| kind | self CPU s | share |\n|---|---|---|")
                for k, t in sorted(by_kind.items(), key=lambda kv: -kv[1]):
                    print(f"| {k} | {t / 1e6:.2f} | {t / total:.0%} |")
                self.prof = None
                control.should_training_stop = True

    return Profile()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cell", help="a trained cell's folder of a run (its hparams.json is read)")
    parser.add_argument("--precision", help="override the cell's precision (fp32, bf16, auto)")
    parser.add_argument("--set", type=json.loads, default={}, help="further hyperparameters changed, as JSON")
    parser.add_argument("--skip", type=int, default=3, help="optimizer steps before profiling (warm-up)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rows", type=int, default=20, help="ops listed")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--by-shape", metavar="OP", help="also list this op's time by input shapes (e.g. aten::copy_)")
    args = parser.parse_args()
    cell, results = layout.Cell.at(args.cell)
    approach = approaches.get(cell.approach)
    hp = {**read_json(Path(args.cell) / "hparams.json"), **args.set, "max_epochs": 1}
    if args.precision:
        hp["precision"] = args.precision
    batch = hp["batch_size"] * hp.get("grad_accum", 1)
    wrapped = training.callbacks
    training.callbacks = lambda *a: [*wrapped(*a), profiler_callback(args.skip, args.steps, batch, args.rows,
                                                                              args.by_shape)]
    with tempfile.TemporaryDirectory() as out:
        approach.entry("train")(str(cell.model_json(results)), str(cell.data_dir(results)), out, cell.rank,
                                cell.seed, hp, args.threads)


if __name__ == "__main__":
    main()
