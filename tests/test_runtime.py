"""The job runtime's process settings (clsbench.runtime)."""
import os
import subprocess
import sys

import pytest

from clsbench import runtime

GROWING_BATCHES = """
import resource, torch
from clsbench import runtime
runtime.keep_freed_memory()
def epoch():  # a step keeps its 30 layers' activations until the backward pass, then frees them
    for mib in (2, 3, 2, 4, 3):  # batches of varying length
        layers = [torch.empty(mib << 20, dtype=torch.uint8).fill_(1) for _ in range(30)]
        del layers
epoch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
epoch()
epoch()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(malloc: str | None) -> int:
    env = {k: v for k, v in os.environ.items() if k != runtime.MALLOC_ENV}
    if malloc:
        env[runtime.MALLOC_ENV] = malloc
    done = subprocess.run([sys.executable, "-c", GROWING_BATCHES], env=env, capture_output=True, text=True,
                          check=True)
    return int(done.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings")
def test_a_job_reuses_the_memory_it_freed_instead_of_faulting_it_in_again():
    kept, default = page_faults(None), page_faults("default")
    # default glibc returns the freed activations to the OS at each step's end (its trim threshold is
    # twice the largest block freed) and faults them in again at the next; kept, they are reused
    assert kept * 10 < default, (kept, default)


def test_the_malloc_setting_can_be_left_as_it_is(monkeypatch):
    monkeypatch.setenv(runtime.MALLOC_ENV, "default")
    assert runtime.keep_freed_memory() is False
