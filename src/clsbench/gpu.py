"""One GPU per job on a multi-GPU machine.

Snakemake's ``--resources gpu=N`` limits how many GPU jobs run at once but does not say which GPU
each one gets (snakemake issue #281): without help every job lands on GPU 0. Each GPU job
therefore claims a free device with an exclusive lock file (held until the process exits) and sets
``CUDA_VISIBLE_DEVICES`` to it before CUDA initialises. Nothing happens when a scheduler already
set ``CUDA_VISIBLE_DEVICES`` (SLURM does) or when the machine has fewer than two GPUs.

``CLSBENCH_GPUS`` (e.g. ``0,1,2,3``) overrides the device list, which otherwise comes from
``nvidia-smi``; ``CLSBENCH_GPU_LOCK_DIR`` sets where the locks live (default: the system temp dir).
"""
from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

_held = []  # open lock files: the lock lasts as long as this process


def visible_devices() -> list[str]:
    if os.environ.get("CLSBENCH_GPUS"):
        return [d.strip() for d in os.environ["CLSBENCH_GPUS"].split(",") if d.strip()]
    if shutil.which("nvidia-smi") is None:
        return []
    run = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True, text=True)
    return [line.strip() for line in run.stdout.splitlines() if line.strip()] if run.returncode == 0 else []


def claim(timeout: float = 3600.0, poll: float = 2.0) -> str | None:
    """Pin this process to a free GPU; returns its index (None when nothing needed pinning)."""
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return None
    devices = visible_devices()
    if len(devices) < 2:
        return None
    lock_dir = Path(os.environ.get("CLSBENCH_GPU_LOCK_DIR", tempfile.gettempdir())) / "clsbench-gpu-locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    while True:
        for device in devices:
            handle = open(lock_dir / f"gpu{device}.lock", "w")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            handle.write(str(os.getpid()))
            handle.flush()
            _held.append(handle)
            os.environ["CUDA_VISIBLE_DEVICES"] = device
            return device
        if time.monotonic() > deadline:
            raise TimeoutError(f"no free GPU among {devices} after {timeout:.0f} s (locks in {lock_dir})")
        time.sleep(poll)
