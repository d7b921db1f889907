"""Shared fixtures: the repository root, tiny prepared Fashion-MNIST and MOSES subsets, one Ray cluster per session."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from vaeflow import config as cfg
from vaeflow import stages

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs/image/tiny.yaml"
MOL_TINY = ROOT / "configs/molecule/tiny.yaml"

# Downloads (where no mirror is configured) land in one cache instead of every test's temp folder.
os.environ.setdefault("VAEFLOW_DATA_CACHE", str(ROOT / "data/raw"))
# Ray Train's controller collects reports every 2 s (0.5 s on init_ray's private clusters) and a
# worker's next report waits until the previous one is collected: with the tests' sub-second epochs
# that poll, not training, would set the pace.
# (Set before any Ray cluster starts, so the controller and the tests' subprocesses inherit it.)
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")


# `git commit` and `dvc exp run` need an identity on machines that have none configured.
GIT_ENV = {"GIT_AUTHOR_NAME": "vaeflow-test", "GIT_AUTHOR_EMAIL": "test@vaeflow.invalid",
           "GIT_COMMITTER_NAME": "vaeflow-test", "GIT_COMMITTER_EMAIL": "test@vaeflow.invalid"}


def ray_processes(title: str) -> list:
    """This process's private cluster's processes whose title starts with ``title`` (Ray names an
    actor's worker ``ray::<Class>``): descendants of this process, since the driver started the
    raylet that forks them."""
    import psutil

    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.cmdline()[:1] and proc.cmdline()[0].startswith(title):
                found.append(proc)
        except psutil.Error:  # ended while we looked
            pass
    return found


def cpu_has_native_bf16() -> bool:
    """From the kernel's CPU flags, not torch: AVX512-BF16 or AMX-BF16 (what ``train.precision: auto``
    should pick bf16 for)."""
    flags = next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("flags")), [])
    return bool({"avx512_bf16", "amx_bf16"} & set(flags))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process_group(proc: subprocess.Popen, grace_s: float = 30) -> None:
    """SIGTERM to the server ``proc`` started in its own session (and its children); SIGKILL after
    ``grace_s`` (a loaded machine can hold an `mlflow server`'s graceful exit past 30 s)."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def copy_tracked_files(dest: Path) -> Path:
    """Copy the project's git-tracked files into ``dest`` (the working tree of a fresh repository)."""
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, dest / name)
    return dest


def tiny_config(tmp: Path, *overrides: str, preset: Path = TINY) -> cfg.ExperimentConfig:
    """A tiny preset (the image one unless told) with tracking and Ray storage inside ``tmp``."""
    return cfg.load(
        preset,
        overrides=[
            f"tracking.uri=sqlite:///{tmp}/mlflow.db",
            f"tracking.artifact_location={tmp}/mlartifacts",
            f"train.storage_path={tmp}/ray_results",
            *overrides,
        ],
    )


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project folder whose data/processed/image holds the tiny preset's real Fashion-MNIST subset."""
    root = tmp_path_factory.mktemp("tiny_project")
    config = cfg.load(TINY)
    stages.prepare(config, stages.Paths.for_modality("image", root), progress=False)
    return root


@pytest.fixture(scope="session")
def mol_data(tmp_path_factory):
    """A project folder whose data/processed/molecule holds the tiny preset's real MOSES subset, and
    the prepare stage's counts."""
    root = tmp_path_factory.mktemp("mol_project")
    counts = stages.prepare(cfg.load(MOL_TINY), stages.Paths.for_modality("molecule", root), progress=False)
    return root, counts


@pytest.fixture
def project(tiny_data, tmp_path):
    """A fresh project folder sharing the session's prepared tiny data."""
    (tmp_path / "data/processed").mkdir(parents=True)
    (tmp_path / "data/processed/image").symlink_to(tiny_data / "data/processed/image")
    return tmp_path


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster (2 CPUs) for the whole session: starting Ray costs 10–30 s."""
    import ray

    from vaeflow.training.ray import init_ray

    # The private local cluster vaeflow itself starts: never another process's Ray instance.
    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture
def ray_head(tmp_path):
    """`ray start --head --block` in its own process group; stopping it kills exactly this cluster
    (never `ray stop`, which would stop every Ray cluster on the machine)."""
    port, dash = free_port(), free_port()
    # `ray start` does not create a token (only a local ray.init does): this cluster gets its own,
    # which the head, `vaeflow submit` and the job all read from the environment.
    # No MLflow credentials of this process reach the cluster: a job gets its own from `vaeflow submit`.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
    env |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    proc = subprocess.Popen(
        ["ray", "start", "--head", "--block", f"--port={port}", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dash}", "--num-cpus=2", "--disable-usage-stats",
         # Ports Ray fixes by default (the job agent's 52365, the client server's 10001) may be held by
         # another Ray instance on this machine, e.g. the session's local cluster: then jobs cannot start.
         f"--dashboard-agent-listen-port={free_port()}", f"--ray-client-server-port={free_port()}"],
        env=env, stdout=open(tmp_path / "head.log", "w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    address = f"http://127.0.0.1:{dash}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{address}/api/version", timeout=2)
            break
        except urllib.error.HTTPError:  # answering (e.g. 401 without a token) means it is up
            break
        except OSError:
            assert proc.poll() is None, (tmp_path / "head.log").read_text()[-2000:]
            time.sleep(0.5)
    else:
        pytest.fail("the Ray head did not start: " + (tmp_path / "head.log").read_text()[-2000:])
    yield address, env
    stop_process_group(proc, grace_s=5)  # on SIGTERM the head drains for up to 30 s; nothing here needs draining
