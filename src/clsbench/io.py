"""Atomic file and directory output, JSON helpers, and the one-line error wrapper for CLIs."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from . import UserError


@contextlib.contextmanager
def atomic_path(final: str | Path, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it onto ``final`` only if the block succeeds.

    A killed or failing job therefore never leaves a half-written file or directory under the
    final name, so Snakemake cannot mistake it for finished output.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{final.name}.tmp-", dir=final.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        tmp.chmod(0o755 if is_dir else 0o644)
        if is_dir and final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_jsonl(path: str | Path, rows: list) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(row, default=_json_default) + "\n" for row in rows))


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def split_dir(out_dir: str | Path, split: str) -> Path:
    """Where a cell's predictions of ``split`` go: the cell folder for test, ``<cell>/<split>/`` else."""
    return Path(out_dir) if split == "test" else Path(out_dir) / split


def write_predictions(out_dir: str | Path, df, probs, pred: list, info: dict, mode: str | None = None,
                      generated: list[str] | None = None) -> dict:
    """The one writer of a cell's predictions, for every approach and inference mode:
    ``predictions[_<mode>].parquet`` (id, gold, probs, pred; with ``generated`` the answers and
    whether each named valid labels) of the texts in ``df``, then ``predict_info[_<mode>].json`` (``info``
    with the parquet's SHA-256, which the evaluate step checks, and for generation the invalid-answer
    rate). ``pred``: each text's predicted labels, None for an answer that named none validly (scored
    as wrong); ``probs``: None where the mode gives none. Returns ``info``."""
    import numpy as np
    import pandas as pd

    from .layout import mode_file

    table = pd.DataFrame({"id": df["id"].values, "gold": list(df["labels"]),
                          "probs": [p.astype(np.float32) for p in probs] if probs is not None else None,
                          "pred": [list(p) if p is not None else [] for p in pred]})
    if generated is not None:
        table["generated"] = generated
        table["valid"] = [p is not None for p in pred]
        info["invalid_output_rate"] = float(1 - table["valid"].mean())
    out_dir = Path(out_dir)
    with atomic_path(out_dir / mode_file("predictions", mode, "parquet")) as tmp:
        table.to_parquet(tmp, index=False)
        info["predictions_sha256"] = sha256(tmp)
    write_json(out_dir / mode_file("predict_info", mode), info)
    return info


TRAIN_RECORD = "train_info.json"  # what made a cell's model (its training, fit, or the untrained model's size)
TRAIN_RECORD_KEYS = {"approach": str, "rank": int, "seed": int, "trainable_params": int, "total_params": int}


def write_train_record(out_dir: str | Path, record: dict) -> dict:
    """The one writer of a cell's ``train_info.json``, for every approach (a Trainer run, the frozen
    ablation, a fitted pipeline, an untrained model's prompts, a reused tuning trial): refuses a record
    without the keys every cell has, of their types (:data:`TRAIN_RECORD_KEYS`: the tables read them);
    each approach adds its own."""
    missing = [key for key in TRAIN_RECORD_KEYS if key not in record]
    wrong = [key for key, kind in TRAIN_RECORD_KEYS.items()
             if key in record and (not isinstance(record[key], kind) or isinstance(record[key], bool))]
    if missing or wrong:  # a bug of the approach, not of the input
        raise ValueError(f"{out_dir}: a train record without {missing} or with {wrong} not of type "
                         f"{[TRAIN_RECORD_KEYS[k].__name__ for k in wrong]}")
    write_json(Path(out_dir) / TRAIN_RECORD, record)
    return record


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj)}")


def json_arg(text: str):
    """An argparse ``type`` for a JSON option: a value that does not parse is argparse's one-line
    error naming the option (exit 2), not a traceback."""
    import argparse

    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not JSON ({err.msg} at character {err.pos}): {text[:80]}") from None


def run_cli(main: Callable[[list[str] | None], Any], argv: list[str] | None = None) -> None:
    """Run a module's ``main``; a :class:`UserError` becomes one ``error: ...`` line and exit code 2
    (or the error's ``exit_code``: 3 for out of memory)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # progress bars only clutter the rule logs
    from .progress import quiet_libraries

    quiet_libraries()
    try:
        main(argv)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(getattr(err, "exit_code", 2))
    except FileNotFoundError as err:  # an input path given on the command line, or a step's input not made
        print(f"error: {err.filename}: not found (resolved from {Path.cwd()}); check the path, or run snakemake "
              "for it", file=sys.stderr)
        sys.exit(2)
    except Exception as err:
        full = disk_full(err)
        if full is None:
            raise
        print(f"error: {full} while writing; free disk space (or raise the file-size limit, ulimit -f) and rerun "
              "snakemake: finished files are kept, a half-written one is never taken for output, and training "
              "resumes from its last epoch checkpoint", file=sys.stderr)
        sys.exit(DISK_FULL_EXIT)


DISK_FULL_EXIT = 4
DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
DISK_FULL_WORDS = ("No space left on device", "File too large", "Disk quota exceeded")


def disk_full(err: BaseException) -> str | None:
    """What says that ``err`` (or an error it was raised from) is a full disk or a file-size limit:
    an OSError's errno, or the words of one that a library re-raised as its own type (safetensors'
    SafetensorError, torch's RuntimeError from its stream writer); None for any other error."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS:
            return f"{err.filename}: {err.strerror}" if err.filename else str(err.strerror)
        words = next((w for w in DISK_FULL_WORDS if w in str(err)), None)
        if words:
            return words
        err = err.__cause__ or err.__context__
    return None
