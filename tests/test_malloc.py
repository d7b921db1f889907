"""vaeflow.malloc: a torch training step on the CPU stops faulting in fresh pages every step."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from vaeflow import malloc

# In a fresh process (malloc's thresholds are per process): train the quick image model for some
# steps, with or without keep_freed_memory, and count the minor page faults of those steps.
STEPS = """
import json, resource, sys
import torch
from vaeflow.malloc import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
from vaeflow import config as cfg
from vaeflow.models.vae import build_model
torch.set_num_threads(2)
config = cfg.load("configs/image/quick.yaml")
model = build_model(config.model, {"channels": 1, "height": 28, "width": 28, "num_classes": 10})
opt = torch.optim.Adam(model.parameters(), 1e-3)
x = torch.rand(128, 1, 28, 28, generator=torch.Generator().manual_seed(0)).bernoulli()
def step():
    out = model(x, None, target=x)
    loss = out.posterior.kl_standard_normal().mean() - model.decoder.log_prob(out.decoded, x).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
step()  # first-step allocations (weights' gradients, Adam's state) are not what is measured
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print(json.dumps({"applied": applied, "faults_per_step": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20}))
"""


def _faults(mode: str) -> dict:
    # Without any malloc tuning of this environment's own, which keep_freed_memory would defer to.
    env = {k: v for k, v in os.environ.items() if k not in malloc._USER_SETTINGS}
    out = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True, timeout=300, check=True,
                         cwd=Path(__file__).resolve().parents[1], env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_a_training_step_reuses_its_buffers_instead_of_faulting_in_new_pages():
    default, kept = _faults("default"), _faults("keep")
    assert kept["applied"] and not default["applied"]
    # Measured: ~6,000 faults per step by default, ~400 kept (the quick image model, batch 128).
    assert kept["faults_per_step"] * 4 < default["faults_per_step"], (default, kept)


def test_a_user_who_tunes_malloc_is_left_alone(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "1048576")
    assert malloc.keep_freed_memory() is False


# In a fresh process: 1 KB buffers (glibc's heap, not Python's small-object arenas), one in 64 kept
# alive so that the heap cannot shrink from its top; the rest freed. Resident memory before and
# after release_freed_memory.
HOLES = """
import json, os
from vaeflow.malloc import release_freed_memory
def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
buffers = [bytes(1024) for _ in range(200_000)]
kept = buffers[::64]
del buffers
before = rss_mb()
released = release_freed_memory()
print(json.dumps({"released": released, "before": before, "after": rss_mb()}))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_release_freed_memory_returns_the_free_pages_between_live_allocations():
    out = subprocess.run([sys.executable, "-c", HOLES], capture_output=True, text=True, timeout=120, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    # 200 MB allocated, 197 MB of it freed in holes that glibc's automatic trim (top of heap only) keeps.
    assert r["released"] and r["before"] - r["after"] > 100, r
