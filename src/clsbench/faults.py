"""Surviving faults: resuming killed training and catching corrupted cached files (the out-of-memory
retry is the batch plan's: :mod:`clsbench.batching`). Used by every trainer.

resume     :func:`resume_point` finds the last complete epoch checkpoint in ``<cell>/checkpoints`` (not a
           declared output, so Snakemake's cleanup of a failed or killed job leaves it); the rerun
           passes it to ``trainer.train(resume_from_checkpoint=...)``.
checksums  an adapter folder carries ``SHA256SUMS`` (``sha256sum -c`` format), predict_info.json the
           SHA-256 of predictions.parquet; the step that reads them removes a file that does not match
           and stops with one line saying so, and the next ``snakemake`` rebuilds it.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from . import UserError
from .io import read_json, sha256, write_json

SUMS = "SHA256SUMS"
RUN_KEY = "run_key.json"


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
