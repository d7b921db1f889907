"""Shared fixtures: the repository root, tiny prepared Fashion-MNIST and MOSES subsets, one Ray cluster per session."""

from __future__ import annotations

import os
import shutil
import subprocess
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
