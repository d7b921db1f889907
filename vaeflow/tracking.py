"""MLflow: one run per job, lineage tags, model logging (pyfunc from config + state dict) and registry.

The driver opens the run and hands its id to the workers; only rank 0 logs into it, through
an ``MlflowClient`` bound to the run id (no global active-run state inside workers).

Each stage records its own resolved settings: train logs the sections it reads as params when it
opens the run; sample and evaluate log theirs when they run (:func:`log_stage_config`).
"""

from __future__ import annotations

import dataclasses
import getpass
import hashlib
import json
import logging
import os
import re
import tempfile
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import mlflow
import numpy as np
import yaml
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from vaeflow.config import ExperimentConfig, TrackingConfig

log = logging.getLogger(__name__)
T = TypeVar("T")

_BATCH = 100  # MLflow's log_batch limit for params per call
# Sections that the sample and evaluate stages log themselves, when they run (not train, which never reads them).
STAGE_SECTIONS = ("sample", "evaluate")
# Keys of evaluate's metrics dict that are settings (how the numbers were made), logged as params.
EVALUATE_SETTINGS = ("n_test", "iwae_k", "iwae_examples", "posthoc_seeds", "posthoc_steps", "n_fd_samples", "n_fd_train")


def tracking_uri(config: TrackingConfig) -> str:
    """Absolute tracking URI: a relative ``sqlite:///x.db`` becomes ``sqlite:////abs/x.db``."""
    uri = config.uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    if "://" not in uri:  # a bare folder path
        return Path(uri).resolve().as_uri()
    return uri


def run_page(config: TrackingConfig, run_id: str, experiment_id: str) -> str | None:
    """The run's page in the UI of the tracking server (None for a local store, which has no UI until
    ``mlflow ui`` serves it). The link names the UI's workflow: MLflow 3.17's UI opens on its GenAI
    view unless told (the sidebar's "GenAI / Model training" switch, remembered per browser), whatever
    the experiment's ``mlflow.experimentKind`` tag says."""
    uri = tracking_uri(config)
    if not uri.startswith(("http://", "https://")):
        return None
    return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"


def client(config: TrackingConfig, *, patient: bool = True) -> Any:
    """The job's client: an ``MlflowClient`` that waits out a tracking-server outage (``PatientClient``),
    or, with ``patient=False``, one that tries once (for what is not worth waiting for)."""
    uri = tracking_uri(config)
    fail_fast_http()
    mlflow.set_tracking_uri(uri)
    c = MlflowClient(tracking_uri=uri, registry_uri=uri)
    return PatientClient(c, uri, config.outage_limit_s) if patient else c


# MLflow 3's UI opens an experiment on its GenAI traces unless this tag names it a model-training one.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def experiment_id(c: MlflowClient, config: TrackingConfig) -> str:
    exp = c.get_experiment_by_name(config.experiment)
    if exp is not None:
        if EXPERIMENT_KIND[0] not in exp.tags:
            c.set_experiment_tag(exp.experiment_id, *EXPERIMENT_KIND)
        return exp.experiment_id
    location = None  # a tracking server decides where its artifacts go (e.g. proxied mlflow-artifacts:/)
    if tracking_uri(config).startswith(("sqlite:", "file:")):
        location = config.artifact_location
        if "://" not in location:
            location = Path(location).resolve().as_uri()
    try:
        return c.create_experiment(config.experiment, artifact_location=location, tags=dict([EXPERIMENT_KIND]))
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
        _hash_bytes(h, f)
    return h.hexdigest()


def _hash_bytes(h: Any, path: Path) -> Any:
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h


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


def dvc_added_hash(path: str | Path) -> str | None:
    """The md5 that ``dvc add`` recorded for ``path`` (a file, or a folder: ``….dir``) in
    ``<path>.dvc``, if it was added."""
    dvc_file = Path(f"{Path(path).as_posix().rstrip('/')}.dvc")
    if not dvc_file.is_file():
        return None
    outs = (yaml.safe_load(dvc_file.read_text()) or {}).get("outs", [])
    return outs[0].get("md5") if outs else None


def source_tags(path: str | Path) -> dict[str, str]:
    """Lineage of a user's own data file (``data.source: files``): its path, content sha256, and the
    DVC md5 of ``dvc add`` when it was added."""
    tags = {"vaeflow.source_path": str(path)}
    if not Path(path).exists():
        log.warning("data.path %s is gone since prepare; the run records no hash of it", path)
        return tags
    if Path(path).is_dir():
        tags["vaeflow.source_sha256"] = content_hash(path)
    else:  # what `sha256sum` prints for it
        tags["vaeflow.source_sha256"] = _hash_bytes(hashlib.sha256(), Path(path)).hexdigest()
    md5 = dvc_added_hash(path)
    if md5:
        tags["dvc.source_md5"] = md5
    else:
        log.warning("%s is not tracked by DVC (no %s.dvc): `dvc add` it so its version is recorded", path, path)
    return tags


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
    if config.data.source == "files":
        tags |= source_tags(config.data.path)
        tags["vaeflow.dataset"] = "files"
    return tags


def run_user() -> str:
    """Whose run it is (the UI's "User" column, ``mlflow.user``): the login a team's tracking server
    authenticated the job with, else the local account, as MLflow's own fluent API records it."""
    try:
        return os.environ.get("MLFLOW_TRACKING_USERNAME") or getpass.getuser()
    except (KeyError, OSError):  # a container user with no passwd entry and no $USER
        return "unknown"


def start_run(config: ExperimentConfig, tags: Mapping[str, str], run_name: str) -> str:
    """Create the job's run with its params (the flattened resolved config) and tags; return its id."""
    c = client(config.tracking)
    run = c.create_run(experiment_id(c, config.tracking), run_name=run_name,
                       tags={"mlflow.user": run_user(), **tags})
    params = [Param(k, str(v)) for k, v in config.flat().items() if k.split(".")[0] not in STAGE_SECTIONS]
    for i in range(0, len(params), _BATCH):
        c.log_batch(run.info.run_id, params=params[i : i + _BATCH])
    return run.info.run_id


def log_metrics(c: MlflowClient, run_id: str, metrics: Mapping[str, float], step: int | None = None) -> None:
    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, step or 0) for k, v in metrics.items() if np.isfinite(v)]
    c.log_batch(run_id, metrics=batch)


def set_tags(c: MlflowClient, run_id: str, tags: Mapping[str, str]) -> None:
    c.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def log_stage_config(c: MlflowClient, run_id: str, stage: str, section: Any, used: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Record the settings a sample or evaluate run used, in the job's run; return them as logged.

    ``section`` is the stage's resolved config section (``sample.n`` …); ``used`` adds what the
    stage derived from it (``evaluate.n_test``; ``evaluate.iwae_examples_used`` where it differs
    from the section's value, e.g. null → the test split's size). MLflow params are immutable, so:
    a key the run lacks is logged as a param; a rerun of the stage with a changed value (e.g.
    ``dvc exp run -S image.evaluate.iwae_k=50``) logs the new value as a tag of the same name, and
    the artifact ``stage_config/<stage>.json`` always holds the latest run's settings.
    """
    plain = dataclasses.asdict(section)  # a nested section (evaluate.classifier) as a dict: logged as JSON
    values = {f"{stage}.{k}": json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in plain.items()}
    for k, v in (used or {}).items():
        if k not in plain:
            values[f"{stage}.{k}"] = v
        elif plain[k] != v:
            values[f"{stage}.{k}_used"] = v
    values = {k: str(v) for k, v in values.items()}
    existing = c.get_run(run_id).data.params
    new = [Param(k, v) for k, v in values.items() if k not in existing]
    changed = {k: v for k, v in values.items() if k in existing and existing[k] != v}
    for i in range(0, len(new), _BATCH):
        c.log_batch(run_id, params=new[i : i + _BATCH])
    if changed:
        log.info("%s settings differ from this run's first %s (params are immutable): logged as tags %s",
                 stage, stage, ", ".join(sorted(changed)))
        set_tags(c, run_id, changed)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{stage}.json"
        path.write_text(json.dumps({"config": plain, "used": dict(used or {})}, indent=2, sort_keys=True, default=str) + "\n")
        c.log_artifact(run_id, str(path), "stage_config")
    return values


# --- Outage: retry with backoff, keep what could not be sent ---------------------------------------
#
# MLflow's client retries a failed request 7 times with exponential backoff (about 4 minutes) and
# then raises, which would end a training job; its async logging queues in a thread that is known to
# hang at exit. vaeflow instead asks MLflow to fail fast (fail_fast_http) and owns the waiting:
# the driver retries each call with capped exponential backoff for up to ``tracking.outage_limit_s``
# (PatientClient); the Ray Train controller never waits, it keeps the epochs that could not be sent
# and sends them at the next report (training/ray.py). Past the limit the job stops with one line;
# its checkpoints are intact and the same command resumes it into the same run.

BACKOFF_FIRST_S, BACKOFF_MAX_S = 1.0, 30.0


class TrackingUnavailable(Exception):
    """The tracking server stayed unreachable past ``tracking.outage_limit_s``."""


def fail_fast_http() -> None:
    """One quick attempt per MLflow request (vaeflow retries around it); a user's own setting wins."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


def unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says the server could not be reached or answered 5xx, as opposed to a refusal
    (4xx: bad request, no permission), which waiting does not cure."""
    if isinstance(exc, (ConnectionError, TimeoutError)):  # OSError's kin, and requests' subclasses
        return True
    text = str(exc)
    return isinstance(exc, mlflow.exceptions.MlflowException) and (
        "failed with exception" in text or "failed with timeout exception" in text
        or "too many 50" in text or "error code 50" in text or "status code 50" in text
    )


def retrying(call: Callable[[], T], *, what: str, uri: str, limit_s: float, sleep: Callable[[float], Any] = time.sleep) -> T:
    """``call()``, retried with capped exponential backoff while the server is unreachable."""
    start, delay = time.monotonic(), BACKOFF_FIRST_S
    while True:
        try:
            return call()
        except Exception as exc:
            if not unreachable(exc):
                raise
            waited = time.monotonic() - start
            if waited >= limit_s:
                raise TrackingUnavailable(
                    f"MLflow at {uri} unreachable for {waited:.0f} s while {what} (tracking.outage_limit_s = "
                    f"{limit_s:g}); start it again, then rerun the same command to resume into the same run"
                ) from None
            log.warning("MLflow at %s unreachable while %s; retrying in %.0f s (waited %.0f of %g s)",
                        uri, what, delay, waited, limit_s)
            sleep(min(delay, limit_s - waited))  # and a last try at the limit
            delay = min(2 * delay, BACKOFF_MAX_S)


class PatientClient:
    """An ``MlflowClient`` whose every call waits out an outage (``retrying``); anything else it
    raises at once. A call that may have reached the server before the connection broke is safe to
    repeat where vaeflow uses it: params and tags overwrite with the same values, artifacts replace
    the same path, and epoch metrics are logged by step only where missing (``log_missing_epochs``)."""

    def __init__(self, inner: MlflowClient, uri: str, limit_s: float):
        self._inner, self._uri, self._limit_s = inner, uri, limit_s

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def patient(*args: Any, **kwargs: Any) -> Any:
            return retrying(lambda: attr(*args, **kwargs), what=name, uri=self._uri, limit_s=self._limit_s)

        return patient


def logged_steps(c: Any, run_id: str, key: str) -> set[int]:
    return {m.step for m in c.get_metric_history(run_id, key)}


def log_missing_epochs(c: Any, run_id: str, history: list[Mapping[str, float]], score: str) -> int:
    """Log the epochs of ``history`` whose step the run lacks (``score`` is in every epoch row); return
    how many. Whatever the controller could not send during an outage ends up in the run exactly once."""
    have = logged_steps(c, run_id, score)
    missing = [row for row in history if int(row["epoch"]) not in have]
    for row in missing:
        log_metrics(c, run_id, {k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))
    return len(missing)


# Credentials and access (read from the environment only: config.CREDENTIAL_ENV)


def check_access(config: TrackingConfig) -> None:
    """Fail in one line when a tracking server refuses us (401/403), before any Ray worker starts.

    Creating (or finding) the experiment needs the permission a job needs: writing to it.
    """
    from vaeflow.config import ConfigError

    uri = tracking_uri(config)
    if not uri.startswith(("http://", "https://")):
        return
    c = client(config)
    try:
        # Tags the experiment (EXPERIMENT_KIND): a write, which a READ-only user may not do.
        c.set_experiment_tag(experiment_id(c, config), *EXPERIMENT_KIND)
    except mlflow.exceptions.MlflowException as exc:
        # A 401 comes with a plain-text body, which MLflow reports only in its message.
        found = re.search(r"error code (\d{3})", str(exc))
        code = int(found.group(1)) if found else exc.get_http_status_code()
        if code == 401:
            raise ConfigError(f"MLflow at {uri}: 401 unauthorized; set MLFLOW_TRACKING_USERNAME / "
                              "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) to a user of that server") from None
        if code == 403:
            raise ConfigError(f"MLflow at {uri}: 403 forbidden; user {os.environ.get('MLFLOW_TRACKING_USERNAME', '?')} "
                              f"may not write to experiment {config.experiment!r}: ask its owner or an admin for "
                              "EDIT permission, or pick another tracking.experiment") from None
        raise
