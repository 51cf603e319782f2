"""Inference batch-size autotuning (``eval_batch_size: auto | fastest``), used by every approach's
predict step: the largest batch that fits, and the fastest of the sizes up to it."""
from __future__ import annotations

from . import UserError

AUTO_BATCH = ("auto", "fastest")  # eval_batch_size values resolved at prediction time


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
            raise _out_of_memory("out of memory with an inference batch of 1; lower max_length or use a larger GPU") from None
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


def resolve_eval_batch(hp: dict, env: dict, run, items: list, lengths: list[int], clock=None) -> dict:
    """``hp`` with an ``eval_batch_size`` of ``auto`` or ``fastest`` replaced by a number (a number
    is returned as it is). ``run(subset, bs)``: inference over ``subset`` of ``items`` (token
    ``lengths``) in batches of ``bs``.

    auto     :func:`largest_batch`: the ``bs`` longest items from ``auto_batch_start`` (default 256
             on a GPU; 32 on a CPU, where host memory runs out by being killed, not with an
             exception), halving after out-of-memory.
    fastest  the largest that fits, then :func:`fastest_batch` over a length-stratified sample of the
             items (every k-th by length; 64 items on a GPU, 16 on a CPU) for the sizes up to it."""
    import numpy as np

    goal = hp.get("eval_batch_size")
    if goal not in AUTO_BATCH:
        return hp
    by_length = [items[i] for i in np.argsort(lengths, kind="stable")]
    start = hp.get("auto_batch_start") or (256 if env["cuda"] else 32)
    size = largest_batch(lambda bs: run(by_length[::-1][:bs], bs), start)
    if goal == "fastest":
        n = min(len(items), 64 if env["cuda"] else 16)
        sample = [by_length[i] for i in np.linspace(0, len(items) - 1, n).round().astype(int)]
        size, speeds = fastest_batch(run, sample, size, clock)
        print("eval_batch_size fastest: " + ", ".join(f"{bs}: {v:.3g}" for bs, v in speeds.items())
              + f" samples/s -> {size}", flush=True)
    else:
        print(f"eval_batch_size auto: {size} (tried from {start})", flush=True)
    return {**hp, "eval_batch_size": size}


def _out_of_memory(message: str) -> UserError:
    from .faults import OutOfMemory

    return OutOfMemory(message)
