"""A training job against a real `mlflow server` that goes away mid-job: it waits, keeps the epochs
that could not be sent and sends them once the server is back; past ``tracking.outage_limit_s`` it
stops with one line and the same command resumes it into the same run. Every epoch exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import TINY
from tests.conftest import free_port
from tests.team_server import wait_until_healthy
from vaeflow import tracking
from vaeflow.config import TrackingConfig
from vaeflow.training.ray import SCORE

EPOCHS = 60


class Server:
    """`mlflow server` on 127.0.0.1 at a fixed port, SQLite backend and proxied artifacts in ``d``:
    stopped and started again on the same port, store and artifacts, as an admin restarting it would."""

    def __init__(self, d):
        self.d, self.port, self.proc = d, free_port(), None
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{self.d}/server.db", "--artifacts-destination", str(self.d / "artifacts")],
            stdout=open(self.d / "server.log", "a"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        wait_until_healthy(self.proc, self.url, self.d / "server.log")

    def kill(self) -> None:
        """The server dies at once (SIGKILL of its process group: no graceful shutdown)."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


@pytest.fixture
def server(tmp_path):
    s = Server(tmp_path)
    s.start()
    yield s
    if s.proc.poll() is None:
        s.kill()


def _train(project, url, *extra: str) -> list[str]:
    return [sys.executable, "-m", "vaeflow.cli", "train", "--preset", str(TINY), "--root", str(project), "--no-progress",
            "--set", f"train.epochs={EPOCHS}", "--set", f"tracking.uri={url}",
            "--set", f"train.storage_path={project}/ray_results", *extra]


def _wait_for_first_epoch(project, proc) -> None:
    deadline = time.monotonic() + 300
    while not list((project / "ray_results").glob("*/checkpoint_*/")):
        assert proc.poll() is None and time.monotonic() < deadline, "training ended before the outage"
        time.sleep(0.05)


def _assert_every_epoch_once(url: str, run_id: str) -> None:
    c = MlflowClient(tracking_uri=url)
    exp = c.get_experiment_by_name("vaeflow-image")
    assert [r.info.run_id for r in c.search_runs([exp.experiment_id])] == [run_id]  # one run for the job
    for key in (SCORE, "train_neg_elbo", "val_kl"):
        assert sorted(m.step for m in c.get_metric_history(run_id, key)) == list(range(1, EPOCHS + 1)), key
    versions = c.search_model_versions("name='vaeflow-image'")
    assert [(v.version, v.run_id) for v in versions] == [("1", run_id)]
    assert c.get_run(run_id).info.status == "FINISHED"


def test_an_unreachable_server_is_waited_for_then_stops_in_one_line():
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    c = tracking.client(TrackingConfig(uri=uri, outage_limit_s=3))
    t0 = time.monotonic()
    with pytest.raises(tracking.TrackingUnavailable) as err:
        c.get_experiment_by_name("vaeflow-image")
    assert 2 <= time.monotonic() - t0 < 30  # it waited (backoff), and not MLflow's own ~4 minutes
    assert str(err.value).startswith(f"MLflow at {uri} unreachable for ") and "tracking.outage_limit_s = 3" in str(err.value)
    assert "\n" not in str(err.value)


def test_a_refusal_is_raised_at_once_not_waited_for(tmp_path):
    c = tracking.client(TrackingConfig(uri=f"sqlite:///{tmp_path}/mlflow.db", outage_limit_s=600))
    t0 = time.monotonic()
    with pytest.raises(Exception) as err:
        c.get_run("0" * 32)  # no such run: waiting would not change the answer
    assert not isinstance(err.value, tracking.TrackingUnavailable) and time.monotonic() - t0 < 10


# About 70 s (a minute of training around a 30 s outage): -m slow.
@pytest.mark.slow
def test_a_30_s_outage_mid_training_loses_and_doubles_nothing(server, project):
    env = os.environ | {"RAY_ADDRESS": ""}
    job = subprocess.Popen(_train(project, server.url), cwd=project, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, start_new_session=True)
    _wait_for_first_epoch(project, job)
    t0 = time.monotonic()
    server.kill()
    time.sleep(30)
    during = len(list((project / "ray_results").glob("*/checkpoint_*/")))
    assert job.poll() is None, "the job ended during the outage: " + job.stderr.read()[-3000:]
    server.start()
    outage = time.monotonic() - t0
    out, err = job.communicate(timeout=600)
    assert job.returncode == 0, err[-3000:]
    assert "unreachable" in err  # the job saw the outage and said so
    (run_dir,) = (project / "ray_results").iterdir()
    run_id = json.loads((run_dir / "vaeflow_job.json").read_text())["mlflow_run_id"]
    _assert_every_epoch_once(server.url, run_id)
    print(f"outage {outage:.0f} s; training went on meanwhile ({during} checkpoints on disk by its end)")


# About 90 s (training, a 10 s limit, the resumed rerun): -m slow.
@pytest.mark.slow
def test_an_outage_past_the_limit_stops_in_one_line_then_the_same_command_resumes(server, project):
    env = os.environ | {"RAY_ADDRESS": ""}
    cmd = _train(project, server.url, "--set", "tracking.outage_limit_s=10")
    job = subprocess.Popen(cmd, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)
    _wait_for_first_epoch(project, job)
    server.kill()
    out, err = job.communicate(timeout=600)
    assert job.returncode == 2, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("vaeflow train: error: MLflow at ") and "unreachable" in last and "rerun the same command" in last
    # (Above it, Ray's controller logs where it stopped, traceback included: Ray's log, not vaeflow's message.)
    (run_dir,) = (project / "ray_results").iterdir()
    job_marker = json.loads((run_dir / "vaeflow_job.json").read_text())
    assert job_marker["status"] == "running"  # the job is not finished: the same command resumes it
    assert list(run_dir.glob("checkpoint_*/"))  # the checkpoints are intact

    server.start()
    again = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming {run_dir.name}" in again.stderr
    _assert_every_epoch_once(server.url, job_marker["mlflow_run_id"])
