"""Host memory kept for reuse while a CPU render runs (engine.pipeline.host_memory), in a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from engine.pipeline import host_memory

pytestmark = pytest.mark.skipif(not host_memory.supported(), reason="needs glibc's malloc")

# 4 blocks of 64 MiB touched and freed: 16,384 page faults each when malloc maps them afresh.
_PROBE = r"""
import json, resource, torch
from engine.pipeline.host_memory import reuse_freed_memory

def faults(fn):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    fn()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

def churn():
    for _ in range(4):
        torch.ones(64 * 2**20 // 4)

def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20

out = {"plain": faults(churn)}
with reuse_freed_memory():
    for _ in range(3):  # maps the pages (glibc grows its heap over a few rounds)
        churn()
    out["reusing"] = faults(churn)
    with reuse_freed_memory():  # a nested run
        pass
    out["after_nested"] = faults(churn)
    big = torch.ones(256 * 2**20 // 4)
    del big
    out["rss_kept_mib"] = rss_mib()
out["rss_after_mib"] = rss_mib()
print(json.dumps(out))
"""


def test_freed_blocks_are_reused_during_a_run_and_handed_back_after() -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120, env=env, check=True
    )
    seen = json.loads(done.stdout)
    blocks = 4 * 64 * 2**20 // os.sysconf("SC_PAGE_SIZE")
    assert seen["plain"] >= blocks * 0.9  # glibc maps and zeroes every big block again
    assert seen["reusing"] < blocks * 0.05
    assert seen["after_nested"] < blocks * 0.05  # a nested run ending keeps the outer one's setting
    # What was freed inside the run (at least the 256 MiB block) is held until it ends, then given back.
    assert seen["rss_kept_mib"] - seen["rss_after_mib"] > 200
