"""GPU placement with a fake device list: concurrent jobs never share a GPU."""
import json
import os
import subprocess
import sys
import time

from clsbench import gpu

CHILD = """
import json, os, sys, time
from clsbench import gpu
device = gpu.claim(timeout=30, poll=0.1)
print(json.dumps({"device": device, "visible": os.environ.get("CUDA_VISIBLE_DEVICES"), "t": time.time()}), flush=True)
time.sleep(float(sys.argv[1]))
"""


def run_jobs(tmp_path, n, hold, extra_env=None):
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env.update(CLSBENCH_GPUS="0,1", CLSBENCH_GPU_LOCK_DIR=str(tmp_path), **(extra_env or {}))
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(hold)], stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(n)]
    return [json.loads(p.communicate(timeout=60)[0]) for p in procs]


def test_two_concurrent_jobs_get_different_gpus(tmp_path):
    out = run_jobs(tmp_path, 2, hold=1.0)
    assert sorted(o["device"] for o in out) == ["0", "1"]
    assert all(o["visible"] == o["device"] for o in out)


def test_a_third_job_waits_for_a_gpu_to_free_up(tmp_path):
    start = time.time()
    out = run_jobs(tmp_path, 3, hold=1.5)
    assert {o["device"] for o in out} == {"0", "1"}
    assert max(o["t"] for o in out) - start >= 1.4  # the third claimed only after one finished


def test_scheduler_assignment_and_single_gpu_are_left_alone(tmp_path, monkeypatch):
    out = run_jobs(tmp_path, 1, hold=0, extra_env={"CUDA_VISIBLE_DEVICES": "3"})
    assert out[0] == {**out[0], "device": None, "visible": "3"}
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("CLSBENCH_GPUS", "0")
    assert gpu.claim() is None and "CUDA_VISIBLE_DEVICES" not in os.environ
