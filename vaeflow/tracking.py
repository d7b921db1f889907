"""MLflow: one run per job, lineage tags, model logging (pyfunc from config + state dict) and registry.

The driver opens the run and hands its id to the workers; only rank 0 logs into it, through
an ``MlflowClient`` bound to the run id (no global active-run state inside workers).
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

import mlflow
import numpy as np
import yaml
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from vaeflow.config import ExperimentConfig, TrackingConfig

log = logging.getLogger(__name__)

_BATCH = 100  # MLflow's log_batch limit for params per call


def tracking_uri(config: TrackingConfig) -> str:
    """Absolute tracking URI: a relative ``sqlite:///x.db`` becomes ``sqlite:////abs/x.db``."""
    uri = config.uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    if "://" not in uri:  # a bare folder path
        return Path(uri).resolve().as_uri()
    return uri


def client(config: TrackingConfig) -> MlflowClient:
    uri = tracking_uri(config)
    mlflow.set_tracking_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(c: MlflowClient, config: TrackingConfig) -> str:
    exp = c.get_experiment_by_name(config.experiment)
    if exp is not None:
        return exp.experiment_id
    location = None  # a tracking server decides where its artifacts go (e.g. proxied mlflow-artifacts:/)
    if tracking_uri(config).startswith(("sqlite:", "file:")):
        location = config.artifact_location
        if "://" not in location:
            location = Path(location).resolve().as_uri()
    try:
        return c.create_experiment(config.experiment, artifact_location=location)
    except mlflow.exceptions.MlflowException:  # created concurrently by another job
        return c.get_experiment_by_name(config.experiment).experiment_id


def git_commit(cwd: str | Path = ".") -> str:
    """HEAD's commit, suffixed ``-dirty`` when tracked files differ from it; ``unknown`` outside git."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")


def content_hash(path: str | Path) -> str:
    """sha256 over a file or a folder's files (relative names and bytes, in sorted order)."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def dvc_out_hash(path: str | Path, lockfile: str | Path = "dvc.lock") -> str | None:
    """The md5 DVC recorded for output ``path`` in dvc.lock, if a stage produced it."""
    lockfile = Path(lockfile)
    if not lockfile.is_file():
        return None
    want = Path(path).as_posix().rstrip("/")
    stages = (yaml.safe_load(lockfile.read_text()) or {}).get("stages", {})
    for stage in stages.values():
        for out in stage.get("outs", []):
            if out.get("path", "").rstrip("/") == want:
                return out.get("md5")
    return None


def lineage_tags(config: ExperimentConfig, processed_dir: str | Path) -> dict[str, str]:
    commit = git_commit()
    tags = {
        "vaeflow.modality": config.modality,
        "vaeflow.dataset": config.data.dataset,
        "vaeflow.config_digest": config.digest(),
        "vaeflow.data_sha256": content_hash(processed_dir),
        "mlflow.source.git.commit": commit,
        "git_commit": commit,
    }
    dvc_md5 = dvc_out_hash(processed_dir)
    if dvc_md5:
        tags["dvc.data_md5"] = dvc_md5
    return tags


def start_run(config: ExperimentConfig, tags: Mapping[str, str], run_name: str) -> str:
    """Create the job's run with its params (the flattened resolved config) and tags; return its id."""
    c = client(config.tracking)
    run = c.create_run(experiment_id(c, config.tracking), run_name=run_name, tags=dict(tags))
    params = [Param(k, str(v)) for k, v in config.flat().items()]
    for i in range(0, len(params), _BATCH):
        c.log_batch(run.info.run_id, params=params[i : i + _BATCH])
    return run.info.run_id


def log_metrics(c: MlflowClient, run_id: str, metrics: Mapping[str, float], step: int | None = None) -> None:
    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, step or 0) for k, v in metrics.items() if np.isfinite(v)]
    c.log_batch(run_id, metrics=batch)


def set_tags(c: MlflowClient, run_id: str, tags: Mapping[str, str]) -> None:
    c.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
