"""A real Ray head on 127.0.0.1 with token authentication: submit a training job and find its MLflow run."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import TINY


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path):
    """`ray start --head --block` in its own process group; stopping it kills exactly this cluster
    (never `ray stop`, which would stop every Ray cluster on the machine)."""
    port, dash = _free_port(), _free_port()
    # `ray start` does not create a token (only a local ray.init does): this cluster gets its own,
    # which the head, `vaeflow submit` and the job all read from the environment.
    env = os.environ | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    proc = subprocess.Popen(
        ["ray", "start", "--head", "--block", f"--port={port}", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dash}", "--num-cpus=2", "--disable-usage-stats",
         # Ports Ray fixes by default (the job agent's 52365, the client server's 10001) may be held by
         # another Ray instance on this machine, e.g. the session's local cluster: then jobs cannot start.
         f"--dashboard-agent-listen-port={_free_port()}", f"--ray-client-server-port={_free_port()}"],
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
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=5)  # on SIGTERM the head drains for up to 30 s; nothing here needs draining
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# About 50 s (a real `ray start` head, a job through the job API, MLflow): -m slow.
@pytest.mark.slow
def test_submit_a_training_job_to_a_local_head(ray_head, tiny_data, tmp_path):
    address, env = ray_head
    workdir = tmp_path / "wd"
    (workdir / "configs/image").mkdir(parents=True)
    (workdir / "configs/image/tiny.yaml").write_text(TINY.read_text())
    db = tmp_path / "mlflow.db"
    proc = subprocess.run(
        [sys.executable, "-m", "vaeflow.cli", "submit", "--address", address, "--working-dir", str(workdir), "--",
         "train", "--preset", "configs/image/tiny.yaml", "--root", str(tiny_data), "--no-progress",
         "--set", f"tracking.uri=sqlite:///{db}", "--set", f"tracking.artifact_location={tmp_path}/artifacts",
         "--set", f"train.storage_path={tmp_path}/ray_results"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout[proc.stdout.rindex("{"):])
    assert result["status"] == "SUCCEEDED" and result["submission_id"].startswith("vaeflow-")
    run = MlflowClient(f"sqlite:///{db}").get_run(result["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["ray.submission_id"] == result["submission_id"]
    assert run.data.metrics["val_neg_elbo"] > 0


def test_submit_without_a_command_is_a_one_line_error():
    proc = subprocess.run([sys.executable, "-m", "vaeflow.cli", "submit", "--address", "http://127.0.0.1:9"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "vaeflow submit: error: nothing to submit: give the vaeflow command after --, e.g. -- train --modality image"
