"""A team's tracking server (PostgreSQL + MLflow basic auth): who may do what, and where credentials must never show."""

from __future__ import annotations

import base64
import dataclasses
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tests.conftest import ROOT, TINY
from tests.mlflow_ui import needs_chromium, review_in_browser
from tests import team_server as team
from tests.team_server import ADMIN, USERS
from vaeflow import config as cfg

postgres, team_server = team.postgres, team.team_server  # the module's fixtures


def _as(server, user: str | None, monkeypatch) -> MlflowClient:
    """A client that sends ``user``'s credentials (read by MLflow from the environment)."""
    for key, value in server.env(user).items():
        if key.startswith("MLFLOW_TRACKING_"):
            monkeypatch.setenv(key, value)
    if user is None:
        monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
        monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    return MlflowClient(tracking_uri=server.url, registry_uri=server.url)


def _status(url: str, auth: tuple[str, str] | None = None) -> int:
    req = urllib.request.Request(url)
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


# The server tests share one PostgreSQL cluster and mlflow server (15–25 s to start, 4–22 s to stop):
# the six server checks took 43–95 s together on the 2 shared cores (by load), so each is -m slow.
slow = pytest.mark.slow


@slow  # 3 s (+ the shared start-up)
def test_anonymous_and_wrong_password_get_401(team_server):
    search = f"{team_server.url}/api/2.0/mlflow/experiments/search?max_results=1"
    assert _status(search) == 401
    assert _status(search, ("alice", "not-her-password")) == 401
    assert _status(search, ("alice", USERS["alice"])) == 200
    assert _status(search, (ADMIN, "first-admin-pw-0")) == 401  # rotated at set-up


@slow  # 9 s
def test_read_only_user_cannot_log_to_or_retag_anothers_work(team_server, monkeypatch):
    alice = _as(team_server, "alice", monkeypatch)
    exp = alice.create_experiment("alice-exp")
    run = alice.create_run(exp)
    alice.log_metric(run.info.run_id, "loss", 1.0, step=0)
    alice.create_registered_model("alice-model")
    v1 = alice.create_model_version("alice-model", f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    v2 = alice.create_model_version("alice-model", f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    alice.set_registered_model_alias("alice-model", "candidate", v1.version)

    reader = _as(team_server, "reader", monkeypatch)
    assert reader.get_run(run.info.run_id).data.metrics == {"loss": 1.0}  # default_permission = READ
    for attempt in (lambda: reader.log_metric(run.info.run_id, "loss", 2.0, step=1),
                    lambda: reader.create_run(exp),
                    lambda: reader.set_registered_model_alias("alice-model", "candidate", v2.version)):
        with pytest.raises(MlflowException) as err:
            attempt()
        assert err.value.get_http_status_code() == 403

    alice = _as(team_server, "alice", monkeypatch)
    alice.set_registered_model_alias("alice-model", "candidate", v2.version)
    assert alice.get_model_version_by_alias("alice-model", "candidate").version == v2.version


def test_credentials_in_the_tracking_uri_are_a_config_error():
    with pytest.raises(cfg.ConfigError, match="MLFLOW_TRACKING_USERNAME"):
        cfg.load(TINY, overrides=["tracking.uri=http://alice:secret@127.0.0.1:5000"])
    cfg.load(TINY, overrides=["tracking.uri=http://127.0.0.1:5000"])  # no credentials: fine


def _train_cli(team_server, user, password, project, *extra):
    env = team_server.env(None) | {"PYTHONPATH": str(ROOT)}
    if user:
        env |= {"MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": password}
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "vaeflow.cli", "train", "--preset", str(TINY), "--root", str(project), "--no-progress",
         "--set", f"tracking.uri={team_server.url}", "--set", f"train.storage_path={project}/ray_results", *extra],
        env=env, capture_output=True, text=True, timeout=120,
    )
    return proc, time.monotonic() - start


@slow  # 7–19 s each: a vaeflow CLI subprocess
@pytest.mark.parametrize("who, code", [(None, "401"), (("alice", "wrong-pw"), "401"), (("reader", USERS["reader"]), "403")])
def test_train_refused_by_the_server_stops_before_ray(team_server, project, monkeypatch, who, code):
    alice = _as(team_server, "alice", monkeypatch)
    if alice.get_experiment_by_name("alice-team") is None:
        alice.create_experiment("alice-team")
    user, password = who or (None, None)
    proc, took = _train_cli(team_server, user, password, project, "--set", "tracking.experiment=alice-team")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and f"{code} " in lines[0] and team_server.url in lines[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Ray" not in proc.stdout + proc.stderr
    assert not (project / "ray_results").exists()
    assert took < 30


@slow  # 8 s
def test_vaeflow_config_never_prints_the_password(team_server, tmp_path):
    env = team_server.env("alice") | {"PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "vaeflow.cli", "config", "--preset", str(TINY),
                           "--set", f"tracking.uri={team_server.url}"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert team_server.url in proc.stdout and USERS["alice"] not in proc.stdout + proc.stderr


@slow  # 65 s: a whole `vaeflow train` (private Ray cluster, 2 epochs) as alice
def test_a_job_logs_as_its_user_and_records_no_password(team_server, project, monkeypatch):
    proc, _ = _train_cli(team_server, "alice", USERS["alice"], project, "--set", "tracking.experiment=alice-jobs",
                         "--set", "train.epochs=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    password = USERS["alice"]
    assert password not in proc.stdout + proc.stderr
    run_id = json.loads((project / "models/image/run.json").read_text())["mlflow_run_id"]
    alice = _as(team_server, "alice", monkeypatch)
    run = alice.get_run(run_id)
    assert run.info.status == "FINISHED"
    recorded = [*run.data.params.items(), *run.data.tags.items()]
    assert recorded and not [kv for kv in recorded if password in kv[0] + kv[1]]
    assert sorted(m.step for m in alice.get_metric_history(run_id, "val_neg_elbo")) == [1, 2]
    exp = alice.get_experiment_by_name("alice-jobs")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    _assert_no_file_holds(project, password)
    assert password not in team_server.log.read_text()


def _assert_no_file_holds(project, secret: str) -> None:
    """No text file a job wrote (configs, vaeflow_job.json, Ray Train's results, logs) holds ``secret``."""
    written = [p for p in project.rglob("*") if p.is_file() and p.suffix in (".json", ".yaml", ".csv", ".txt", ".log")]
    assert any(p.name == "vaeflow_job.json" for p in written)
    assert not [p for p in written if secret in p.read_text(errors="replace")]


@slow  # 635 s with five other sessions on the 2 cores (load 20): a `ray start` head, four submitted jobs, Chromium
@needs_chromium
def test_a_submitted_job_is_reviewed_in_the_ui_with_its_password_nowhere(team_server, ray_head, project, tmp_path):
    """`vaeflow submit` as alice to a Ray head that has no MLflow credentials of its own: the jobs log
    to the team server as alice; the password is in no Ray job log, file or run record; alice then
    reviews the run (metrics, sample grid, per-epoch CSV) and the model's alias in the browser."""
    address, head_env = ray_head
    workdir = tmp_path / "wd"
    (workdir / "configs/image").mkdir(parents=True)
    (workdir / "configs/image/tiny.yaml").write_text(TINY.read_text())
    sets = [f"tracking.uri={team_server.url}", "tracking.experiment=alice-reviewed",
            "tracking.registered_model=alice-reviewed-model", "train.epochs=2", f"train.storage_path={project}/ray_results"]
    env = team_server.env("alice") | {k: head_env[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    password, jobs = USERS["alice"], []
    for command in ("train", "sample", "classifier", "evaluate"):
        proc = subprocess.run(
            [sys.executable, "-m", "vaeflow.cli", "submit", "--address", address, "--working-dir", str(workdir), "--",
             command, "--preset", "configs/image/tiny.yaml", "--root", str(project), "--no-progress",
             *[arg for kv in sets for arg in ("--set", kv)]],
            env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert password not in proc.stdout + proc.stderr
        jobs.append(json.loads(proc.stdout[proc.stdout.rindex("{"):]))
        assert jobs[-1]["status"] == "SUCCEEDED", jobs[-1]

    for job in jobs:  # what `ray job logs` shows anyone holding the cluster's token
        logs = subprocess.run(["ray", "job", "logs", "--address", address, job["submission_id"]],
                              env=head_env, capture_output=True, text=True, timeout=120)
        assert logs.returncode == 0 and "vaeflow" in logs.stdout, logs.stdout[-2000:] + logs.stderr[-2000:]
        assert password not in logs.stdout + logs.stderr
    _assert_no_file_holds(project, password)

    run_id = json.loads((project / "models/image/run.json").read_text())["mlflow_run_id"]
    run = MlflowClient(team_server.url).get_run(run_id)  # as the admin (the team_server fixture's login)
    assert run.data.tags["mlflow.user"] == "alice" and run.data.tags["ray.submission_id"] == jobs[0]["submission_id"]
    assert not [kv for kv in [*run.data.params.items(), *run.data.tags.items()] if password in kv[0] + kv[1]]
    config = cfg.load(TINY, overrides=sets)
    review_in_browser(team_server.url, config, json.loads((project / "models/image/run.json").read_text()),
                      tmp_path, credentials=("alice", password))


@slow  # 157 s (+15 s server start), on the 2 shared cores
def test_four_jobs_at_once_log_every_epoch_once(team_server, tiny_data, tmp_path, monkeypatch):
    """Four `vaeflow train` processes (each its own private Ray cluster, 1 worker, 2 epochs) at once, as alice;
    two register versions of one model name. Every run keeps each per-epoch metric exactly once per
    step, the shared model's versions are 1..2, and the server log shows no deadlock (40P01) and no
    exhausted connection pool.

    Measured (MLflow 3.17.2, PostgreSQL 15, default pool, one server worker, 2 shared CPU cores):
    4 jobs, 4 runs, 92 metric rows, 119 s wall for the four jobs; no 40P01, no pool timeout.
    """
    epochs, procs = 2, []
    start = time.monotonic()
    for i in range(4):
        project = tmp_path / f"job{i}"
        (project / "data/processed").mkdir(parents=True)
        (project / "data/processed/image").symlink_to(tiny_data / "data/processed/image")
        model = "team-shared" if i < 2 else f"team-own-{i}"
        env = team_server.env("alice") | {"PYTHONPATH": str(ROOT)}
        procs.append((project, subprocess.Popen(
            [sys.executable, "-m", "vaeflow.cli", "train", "--preset", str(TINY), "--root", str(project), "--no-progress",
             "--set", f"tracking.uri={team_server.url}", "--set", "tracking.experiment=team-concurrent",
             "--set", f"tracking.registered_model={model}", "--set", f"train.epochs={epochs}",
             "--set", "train.num_workers=1", "--set", f"seed={i}", "--set", f"train.storage_path={project}/ray_results"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
    outputs = [(project, proc.communicate(timeout=900)[0], proc.returncode) for project, proc in procs]
    took = time.monotonic() - start
    for _, out, rc in outputs:
        assert rc == 0, out[-3000:]
    alice = _as(team_server, "alice", monkeypatch)
    rows = 0
    for project, _, _ in outputs:
        run_id = json.loads((project / "models/image/run.json").read_text())["mlflow_run_id"]
        run = alice.get_run(run_id)
        assert run.info.status == "FINISHED"
        per_epoch = [k for k in run.data.metrics if k.startswith(("train_", "val_"))]
        assert per_epoch
        for key in per_epoch:
            steps = sorted(m.step for m in alice.get_metric_history(run_id, key))
            assert steps == list(range(1, epochs + 1)), (key, steps)
        rows += sum(len(alice.get_metric_history(run_id, k)) for k in run.data.metrics)
    versions = sorted(int(v.version) for v in alice.search_model_versions("name='team-shared'"))
    assert versions == [1, 2]
    log = team_server.log.read_text()
    for sign in ("40P01", "deadlock detected", "QueuePool limit", "TimeoutError"):
        assert sign not in log, sign
    print(f"4 jobs, 4 runs, {rows} metric rows, {took:.0f} s wall")


def test_experiments_open_on_their_training_runs(tmp_path):  # < 2 s, SQLite: not slow
    from vaeflow import tracking

    config = cfg.load(TINY, overrides=[f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
                                       f"tracking.artifact_location={tmp_path}/art"]).tracking
    c = tracking.client(config)
    created = tracking.experiment_id(c, config)
    old = c.create_experiment("made-elsewhere")
    existing = tracking.experiment_id(c, dataclasses.replace(config, experiment="made-elsewhere"))
    assert existing == old
    for exp_id in (created, old):
        assert c.get_experiment(exp_id).tags["mlflow.experimentKind"] == "custom_model_development"
