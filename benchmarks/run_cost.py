"""What a grid run cost, from its Snakemake benchmark files (``results/benchmarks/**/*.tsv``, one per
job: wall seconds, peak memory), also for a run that was stopped and resumed across sessions, where
the wall clock says nothing.

    python benchmarks/run_cost.py runs/claims
    python benchmarks/run_cost.py runs/claims --exclude-above 3600   # drop jobs that were paused

Prints seconds per rule × approach × model (jobs, total, mean), the sum over all jobs, and the sum
over GPU-resource jobs (train / predict steps): with ``--resources gpu=1`` those run one at a time,
so their sum is a lower bound of the wall time on any number of cores.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

GPU_RULES = {"train", "predict", "predict_val", "train_trial", "predict_trial"}  # benchmark names of the gpu-resource rules (predict_val: runs before
# the validation predictions moved into the predict jobs)


def job_table(run_dir: Path) -> pd.DataFrame:
    """One row per benchmark file: rule, dataset, model, approach, seconds."""
    rows = []
    root = run_dir / "results" / "benchmarks"
    for path in sorted(root.rglob("*.tsv")):
        parts = path.relative_to(root).parts
        seconds = float(pd.read_csv(path, sep="\t")["s"].iloc[-1])
        if len(parts) == 6:  # <dataset>/<model>/<approach>/r<rank>/s<seed>/<rule>.tsv
            row = {"rule": path.stem, "dataset": parts[0], "model": parts[1], "approach": parts[2]}
        elif len(parts) == 8 and parts[4] == "tune":  # .../r<rank>/tune/t<trial>/s<seed>/<rule>.tsv: a tuning trial
            row = {"rule": f"{path.stem}_trial", "dataset": parts[0], "model": parts[1], "approach": parts[2]}
        else:  # models/<model>.tsv, data/<dataset>.tsv, report/<rule>.tsv
            row = {"rule": parts[0], "dataset": "-", "model": path.stem, "approach": "-"}
        rows.append({**row, "seconds": seconds, "file": str(path)})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--exclude-above", type=float, help="leave out jobs longer than this many seconds "
                        "(a job paused with SIGSTOP counts its pause); they are listed")
    args = parser.parse_args(argv)
    jobs = job_table(args.run_dir)
    if jobs.empty:
        raise SystemExit(f"no benchmark files under {args.run_dir / 'results' / 'benchmarks'}")
    if args.exclude_above:
        long = jobs[jobs["seconds"] > args.exclude_above]
        for _, job in long.iterrows():
            print(f"left out: {job['file']} ({job['seconds']:.0f} s)")
        jobs = jobs[jobs["seconds"] <= args.exclude_above]
    table = (jobs.groupby(["rule", "approach", "model"])["seconds"].agg(jobs="count", total="sum", mean="mean")
             .reset_index().sort_values("total", ascending=False))
    print(table.to_string(index=False, float_format=lambda x: f"{x:.0f}"))
    gpu = jobs[jobs["rule"].isin(GPU_RULES)]["seconds"].sum()
    print(f"\n{len(jobs)} jobs: {jobs['seconds'].sum() / 3600:.2f} h of job time; GPU-resource jobs (one at a time "
          f"under gpu=1): {gpu / 3600:.2f} h")


if __name__ == "__main__":
    main()
