"""Surviving faults: resuming killed training, retrying out-of-memory with smaller micro-batches, and
catching corrupted cached files. Used by every trainer (``head``; ``instruct`` can call the same).

resume     :func:`resume_point` finds the last complete epoch checkpoint in ``<cell>/checkpoints`` (not a
           declared output, so Snakemake's cleanup of a failed or killed job leaves it); the rerun
           passes it to ``trainer.train(resume_from_checkpoint=...)``.
oom        :func:`oom_retry` turns an out-of-memory error into ``oom-{stage}.json`` (smaller micro-batch,
           more gradient accumulation: the same effective batch) and exit code 3; Snakemake's
           ``retries:`` reruns the job, and :func:`batch_plan` picks the record up. Only an
           out-of-memory error writes the record, so any other failure retries with the configured
           batch sizes. ``CLSBENCH_SIMULATE_OOM_ABOVE=n`` injects the fault where no GPU is at hand.
checksums  an adapter folder carries ``SHA256SUMS`` (``sha256sum -c`` format), predict_info.json the
           SHA-256 of predictions.parquet; the step that reads them removes a file that does not match
           and stops with one line saying so, and the next ``snakemake`` rebuilds it.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from . import UserError
from .batching import AUTO_BATCH
from .io import read_json, sha256, write_json

OOM_ENV = "CLSBENCH_SIMULATE_OOM_ABOVE"
SUMS = "SHA256SUMS"
RUN_KEY = "run_key.json"


class OutOfMemory(UserError):
    """Out of (GPU) memory: reported as one line with exit code 3, distinct from other errors (2)."""

    exit_code = 3


# ---------------------------------------------------------------- resume
def resume_point(ckpt_dir: str | Path, run_key: dict | None = None) -> str | None:
    """The last complete checkpoint in ``ckpt_dir`` (Trainer's ``checkpoint-N`` folders), or None.

    A checkpoint is complete once its ``trainer_state.json`` (the Trainer writes it last) parses; a
    folder cut short by a kill is removed. With ``run_key`` (whatever fixes the run: hyperparameters,
    seed, data and model digests), checkpoints left by a different run are removed first, so a changed
    config never resumes from stale weights; the key is then recorded for the next attempt.
    """
    from transformers.trainer_utils import get_last_checkpoint

    ckpt_dir = Path(ckpt_dir)
    if run_key is not None:
        key_file = ckpt_dir / RUN_KEY
        key = json.loads(json.dumps(run_key, sort_keys=True, default=str))
        if ckpt_dir.exists() and (not key_file.exists() or read_json(key_file) != key):
            shutil.rmtree(ckpt_dir)
        if not key_file.exists():
            write_json(key_file, key)
    while ckpt_dir.is_dir() and (last := get_last_checkpoint(str(ckpt_dir))) is not None:
        try:
            json.loads((Path(last) / "trainer_state.json").read_text())
            return last
        except (OSError, ValueError):
            shutil.rmtree(last)
    return None


# ---------------------------------------------------------------- out of memory


def configured_plan(hp: dict, stage: str) -> dict:
    """Batch sizes as configured. ``eval_batch_size: auto`` / ``fastest`` is resolved by the predict
    step (:func:`resolve_eval_batch`); validation during training then uses twice the micro-batch (a
    forward pass without stored activations fits where a training step of that size does)."""
    plan = {"eval_batch_size": hp.get("eval_batch_size", 8)}
    if stage == "train":
        plan.update(batch_size=hp["batch_size"], grad_accum=hp.get("grad_accum", 1))
        if plan["eval_batch_size"] in AUTO_BATCH:
            plan["eval_batch_size"] = 2 * hp["batch_size"]
    return plan


def batch_plan(hp: dict, out_dir: str | Path, stage: str) -> dict:
    """Batch sizes of this attempt: the configured ones (``batch_size``, ``grad_accum`` for training;
    ``eval_batch_size``), or those an out-of-memory failure of the same configuration left for it."""
    record = Path(out_dir) / f"oom-{stage}.json"
    if record.exists():
        saved = read_json(record)
        if saved.get("configured") == configured_plan(hp, stage):
            print(f"{record}: the last attempt ran out of memory at {describe(saved['failed'])}; "
                  f"this one uses {describe(saved['next'])}", flush=True)
            return saved["next"]
    return configured_plan(hp, stage)


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
def oom_retry(out_dir: str | Path, stage: str, hp: dict, plan: dict) -> Iterator[None]:
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
        write_json(record, {"configured": configured_plan(hp, stage), "failed": plan, "next": nxt})
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


# ---------------------------------------------------------------- checksums
def write_sums(folder: str | Path) -> None:
    """``SHA256SUMS`` of every regular file under ``folder`` (links to the base model are skipped)."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink() and p.name != SUMS)
    (folder / SUMS).write_text("".join(f"{sha256(p)}  {p.relative_to(folder)}\n" for p in files))


def corrupted(path: Path, why: str, *remove: Path, then: str = "run snakemake again to rebuild it") -> UserError:
    """Remove ``remove`` (the damaged output and what was computed from it; Snakemake does not rebuild a
    missing intermediate file while the files made from it exist) and return the error to raise."""
    for r in remove:
        shutil.rmtree(r) if r.is_dir() else r.unlink(missing_ok=True)
    removed = f"removed {', '.join(map(str, remove))}" if remove else "nothing was removed"
    return UserError(f"{path}: {why} (truncated or corrupted); {removed}; {then}")


def check_sums(folder: str | Path, derived: tuple[Path, ...] = (), then: str = "run snakemake again to rebuild it",
               remove: bool = True) -> None:
    """Every file listed in ``folder/SHA256SUMS`` exists and matches; otherwise ``folder`` and the
    ``derived`` files are removed (inside a run, where the pipeline made them and rebuilds them; outside
    one, ``remove=False``: a copied cell is the user's, nothing of it is deleted). Folders written
    before checksums existed (no SHA256SUMS) pass."""
    folder = Path(folder)
    if not (folder / SUMS).exists():
        return
    doomed = (folder, *derived) if remove else ()
    for line in (folder / SUMS).read_text().splitlines():
        digest, _, name = line.partition("  ")
        path = folder / name
        if not name or not path.is_file():
            raise corrupted(folder / SUMS, f"lists a missing file {name!r}", *doomed, then=then)
        if sha256(path) != digest:
            raise corrupted(path, f"SHA-256 differs from {SUMS}", *doomed, then=then)


def quick_check(folder: str | Path) -> str | None:
    """What is wrong with a folder carrying ``SHA256SUMS``, found without hashing (cheap enough to run
    over every cell before each run): a listed file missing, a safetensors file shorter or longer
    than its header says, a JSON file that does not parse. None if nothing is (the full check,
    :func:`check_sums`, runs where the folder is read)."""
    folder = Path(folder)
    if not (folder / SUMS).exists():
        return None
    for line in (folder / SUMS).read_text().splitlines():
        name = line.partition("  ")[2]
        path = folder / name
        if not name or not path.is_file():
            return f"{folder / SUMS} lists a missing file {name!r}"
        try:
            if path.suffix == ".safetensors":
                with open(path, "rb") as f:
                    size = int.from_bytes(f.read(8), "little")
                    header = json.loads(f.read(size))
                end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
                if path.stat().st_size != 8 + size + end:
                    return f"{path} holds {path.stat().st_size} bytes, its header says {8 + size + end}"
            elif path.suffix == ".json":
                json.loads(path.read_text())
        except (ValueError, KeyError, TypeError, OSError, UnicodeDecodeError) as err:
            return f"{path} cannot be read ({type(err).__name__})"
    return None


def check_file(path: str | Path, digest: str | None, recorded_in: str | Path) -> None:
    """``path`` matches the SHA-256 recorded in ``recorded_in`` (no record: an older cell, passes)."""
    path = Path(path)
    if digest is not None and sha256(path) != digest:
        raise corrupted(path, f"SHA-256 differs from the one recorded in {recorded_in}", path)
