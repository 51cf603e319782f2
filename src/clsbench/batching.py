"""Batch sizes of a job: the batch plan with its out-of-memory retry, and inference batch-size
autotuning (``eval_batch_size: auto | fastest``).

plan       :func:`batch_plan`: the configured sizes, or those an out-of-memory failure left for the retry.
oom        :func:`oom_retry` turns an out-of-memory error into ``oom-{stage}.json`` (smaller micro-batch,
           more gradient accumulation: the same effective batch) and exit code 3; Snakemake's
           ``retries:`` reruns the job, and :func:`batch_plan` picks the record up. Only an
           out-of-memory error writes the record, so any other failure retries with the configured
           batch sizes. ``CLSBENCH_SIMULATE_OOM_ABOVE=n`` injects the fault where no GPU is at hand.
autotune   :func:`resolve_eval_batch`: the largest inference batch that fits, or the fastest size up to it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from . import UserError
from .io import read_json, write_json

if TYPE_CHECKING:
    from .runtime import InferenceHparams

OOM_ENV = "CLSBENCH_SIMULATE_OOM_ABOVE"

AUTO_BATCH = ("auto", "fastest")  # eval_batch_size values resolved at prediction time


class OutOfMemory(UserError):
    """Out of (GPU) memory: reported as one line with exit code 3, distinct from other errors (2)."""

    exit_code = 3


def configured_plan(h: InferenceHparams, stage: str) -> dict:
    """Batch sizes as configured. ``eval_batch_size: auto`` / ``fastest`` is resolved by the predict
    step (:func:`resolve_eval_batch`); validation during training then uses twice the micro-batch (a
    forward pass without stored activations fits where a training step of that size does)."""
    plan = {"eval_batch_size": h.eval_batch_size}
    if stage == "train":  # h: an EpochHparams
        plan.update(batch_size=h.batch_size, grad_accum=h.grad_accum)
        if plan["eval_batch_size"] in AUTO_BATCH:
            plan["eval_batch_size"] = 2 * h.batch_size
    return plan


def batch_plan(h: InferenceHparams, out_dir: str | Path, stage: str) -> dict:
    """Batch sizes of this attempt: the configured ones (``batch_size``, ``grad_accum`` for training;
    ``eval_batch_size``), or those an out-of-memory failure of the same configuration left for it."""
    record = Path(out_dir) / f"oom-{stage}.json"
    if record.exists():
        saved = read_json(record)
        if saved.get("configured") == configured_plan(h, stage):
            print(f"{record}: the last attempt ran out of memory at {describe(saved['failed'])}; "
                  f"this one uses {describe(saved['next'])}", flush=True)
            return saved["next"]
    return configured_plan(h, stage)


def halved(plan: dict) -> dict:
    """Smaller batch sizes after an out-of-memory error: the micro-batch drops to its largest proper
    divisor (half when even) and gradient accumulation grows by the same factor, so the effective batch
    is unchanged; the evaluation batch halves."""
    out = dict(plan)
    if plan.get("batch_size", 1) > 1:
        b = plan["batch_size"]
        micro = next(d for d in range(b // 2, 0, -1) if b % d == 0)
        out.update(batch_size=micro, grad_accum=plan["grad_accum"] * (b // micro))
    out["eval_batch_size"] = max(1, plan["eval_batch_size"] // 2)
    return out


def describe(plan: dict) -> str:
    train = (f"micro-batch {plan['batch_size']} x gradient accumulation {plan['grad_accum']} "
             f"(effective batch {plan['batch_size'] * plan['grad_accum']}), " if "batch_size" in plan else "")
    return train + f"eval batch {plan['eval_batch_size']}"


def is_oom(err: BaseException) -> bool:
    import torch
    from accelerate.utils.memory import should_reduce_batch_size

    return isinstance(err, torch.OutOfMemoryError) or should_reduce_batch_size(err)


@contextlib.contextmanager
def oom_retry(out_dir: str | Path, stage: str, h: InferenceHparams, plan: dict) -> Iterator[None]:
    """Run a stage that used ``plan`` (from :func:`batch_plan`). Out of memory: record the halved plan
    in ``oom-{stage}.json`` for Snakemake's retry and raise :class:`OutOfMemory`; success: drop the record."""
    record = Path(out_dir) / f"oom-{stage}.json"
    try:
        yield
    except Exception as err:
        if not is_oom(err):
            raise
        nxt = halved(plan)
        if nxt == plan:
            raise OutOfMemory(f"cell {out_dir}: out of memory in {stage} already at {describe(plan)}; lower "
                              "max_length or use a larger GPU") from None
        write_json(record, {"configured": configured_plan(h, stage), "failed": plan, "next": nxt})
        raise OutOfMemory(f"cell {out_dir}: out of memory in {stage} at {describe(plan)}; the retry uses "
                          f"{describe(nxt)} (recorded in {record})") from None
    record.unlink(missing_ok=True)


def simulate_oom(model) -> None:
    """Fault injection for tests on machines without a GPU: with ``CLSBENCH_SIMULATE_OOM_ABOVE=n`` in
    the environment, every forward pass on more than ``n`` texts raises ``torch.OutOfMemoryError``, as a
    too-large micro-batch does on a GPU. Without the variable (normal runs) nothing is installed."""
    limit = os.environ.get(OOM_ENV)
    if not limit:
        return
    import torch

    def check(module, args):
        if args[0].shape[0] > int(limit):
            raise torch.OutOfMemoryError(f"CUDA out of memory. (simulated by {OOM_ENV}={limit}: "
                                         f"a batch of {args[0].shape[0]})")

    model.get_input_embeddings().register_forward_pre_hook(check)


def largest_batch(probe, start: int) -> int:
    """The largest inference batch that fits, for ``eval_batch_size: auto``: ``probe(bs)`` runs one
    batch of the ``bs`` longest inputs (the costliest batch of a length-sorted pass); from ``start``
    the size halves after every out-of-memory error (accelerate's ``find_executable_batch_size``)."""
    from accelerate.utils import find_executable_batch_size

    size = start

    def halve() -> int:
        nonlocal size
        size //= 2
        return size

    @find_executable_batch_size(starting_batch_size=start, reduce_batch_size_fn=halve)
    def fits(batch_size: int) -> int:
        probe(batch_size)
        return batch_size

    try:
        return fits()
    except RuntimeError as err:
        if "No executable batch size" in str(err):
            raise OutOfMemory("out of memory with an inference batch of 1; lower max_length or use a larger GPU") from None
        raise


BATCHES_PER_SIZE = 4  # batches timed per candidate size (fewer items for the small, slow sizes)


def fastest_batch(run, sample: list, limit: int, clock=None) -> tuple[int, dict[int, float]]:
    """The inference batch with the most samples/s, for ``eval_batch_size: fastest``: for bs = 1, 2,
    4, ... up to ``limit`` and len(sample), ``run(subset, bs)`` (a length-sorted pass in batches of
    ``bs``) is timed on ``BATCHES_PER_SIZE`` batches' worth of ``sample`` (evenly spread over it, so
    short and long items alike; the whole sample once that is larger), after one warm-up batch.
    Returns (size, {size: samples/s}). Small sizes get few items: they are the slowest per item
    (batch-1 generation of every sample item would take as long as a large part of the prediction it
    tunes). On a GPU throughput grows with the batch until memory runs out; on a CPU it need not
    (docs/throughput.md has measured sizes)."""
    import time

    import numpy as np

    clock = clock or time.perf_counter
    run(sample[:1], 1)
    speeds = {}
    size = 1
    while size <= min(limit, len(sample)):
        n = min(len(sample), BATCHES_PER_SIZE * size)
        subset = [sample[i] for i in np.linspace(0, len(sample) - 1, n).round().astype(int)]
        t0 = clock()
        run(subset, size)
        speeds[size] = len(subset) / max(clock() - t0, 1e-9)
        size *= 2
    return max(speeds, key=speeds.get), speeds


def resolve_eval_batch(h: InferenceHparams, env: dict, run, items: list, lengths: list[int], clock=None):
    """``h`` with an ``eval_batch_size`` of ``auto`` or ``fastest`` replaced by a number (a number
    is returned as it is). ``run(subset, bs)``: inference over ``subset`` of ``items`` (token
    ``lengths``) in batches of ``bs``.

    auto     :func:`largest_batch`: the ``bs`` longest items from ``auto_batch_start`` (default 256
             on a GPU; 32 on a CPU, where host memory runs out by being killed, not with an
             exception), halving after out-of-memory.
    fastest  the largest that fits, then :func:`fastest_batch` over a length-stratified sample of the
             items (every k-th by length; 64 items on a GPU, 16 on a CPU) for the sizes up to it."""
    import numpy as np

    goal = h.eval_batch_size
    if goal not in AUTO_BATCH:
        return h
    by_length = [items[i] for i in np.argsort(lengths, kind="stable")]
    start = h.auto_batch_start or (256 if env["cuda"] else 32)
    size = largest_batch(lambda bs: run(by_length[::-1][:bs], bs), start)
    if goal == "fastest":
        n = min(len(items), 64 if env["cuda"] else 16)
        sample = [by_length[i] for i in np.linspace(0, len(items) - 1, n).round().astype(int)]
        size, speeds = fastest_batch(run, sample, size, clock)
        print("eval_batch_size fastest: " + ", ".join(f"{bs}: {v:.3g}" for bs, v in speeds.items())
              + f" samples/s -> {size}", flush=True)
    else:
        print(f"eval_batch_size auto: {size} (tried from {start})", flush=True)
    return dataclasses.replace(h, eval_batch_size=size)

