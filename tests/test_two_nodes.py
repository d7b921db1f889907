"""Two real Ray nodes on 127.0.0.1 (a head and a worker node, `ray start` each); the worker node is
lost mid-epoch, a replacement node joins, and the job ends with one MLflow run and every epoch once."""

from __future__ import annotations

import json
import os
import random
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
import urllib.request

from tests.conftest import TINY, free_port

EPOCHS = 12


def _node_args(name: str) -> list[str]:
    """Ports of their own for each raylet (Ray's fixed defaults would collide on one host), one CPU
    and a resource naming the node."""
    base = random.randrange(20000, 29900, 100)  # a worker port range of its own (below the OS's ephemeral ports)
    return [f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
            f"--min-worker-port={base}", f"--max-worker-port={base + 99}", "--node-ip-address=127.0.0.1",
            f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
            f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
            "--num-cpus=1", f"--resources={json.dumps({name: 1})}", "--disable-usage-stats", "--block"]


class _Nodes:
    """The `ray start --block` processes of one test, each in its own process group."""

    def __init__(self, tmp: Path, env: dict[str, str]):
        self.tmp, self.env, self.procs = tmp, env, {}

    def start(self, name: str, *args: str) -> subprocess.Popen:
        proc = subprocess.Popen(["ray", "start", *args, *_node_args(name)], env=self.env,
                                stdout=open(self.tmp / f"{name}.log", "w"), stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs[name] = proc
        return proc

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.kill(name)


def _state(dashboard: str, kind: str) -> list[dict]:
    """Ray's state API over HTTP with this cluster's token (`ray.util.state` would use the token
    this process loaded first, which may be another cluster's)."""
    request = urllib.request.Request(f"{dashboard}/api/v0/{kind}?limit=10000&detail=1",
                                     headers={"Authorization": f"Bearer {os.environ['RAY_AUTH_TOKEN']}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)["data"]["result"]["result"]


def _alive_nodes(dashboard: str) -> dict[str, str]:
    """node id → the node's name resource, for the nodes the GCS reports alive."""
    found = {}
    for node in _state(dashboard, "nodes"):
        names = [r for r in node.get("resources_total", {}) if r.startswith("node_")]
        if node["state"] == "ALIVE" and names:
            found[node["node_id"]] = names[0]
    return found


def _wait(what: str, check, timeout: float, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except Exception:  # the state API answers only once the dashboard is up
            value = None
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}" + (": " + log.read_text()[-2000:] if log and log.exists() else ""))


# About 95 s (two `ray start` nodes, a third after the loss, a 12-epoch job that restarts once): -m slow.
@pytest.mark.slow
def test_losing_a_node_mid_epoch_the_job_continues_on_a_replacement(project, tmp_path, monkeypatch):
    gcs = f"127.0.0.1:{free_port()}"
    # A token of this cluster's own (as in test_cluster.py), also for this process's state API calls.
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
    env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("RAY_ADDRESS", None)
    nodes = _Nodes(tmp_path, env)
    timeline: dict[str, float] = {}
    try:
        dash_port = free_port()
        dashboard = f"http://127.0.0.1:{dash_port}"
        nodes.start("node_a", "--head", f"--port={gcs.split(':')[1]}", "--dashboard-host=127.0.0.1",
                    f"--dashboard-port={dash_port}", f"--ray-client-server-port={free_port()}")
        _wait("the head", lambda: "node_a" in _alive_nodes(dashboard).values(), 120, tmp_path / "node_a.log")
        nodes.start("node_b", f"--address={gcs}")
        _wait("the second node", lambda: "node_b" in _alive_nodes(dashboard).values(), 120, tmp_path / "node_b.log")

        storage = tmp_path / "shared/ray_results"  # the folder every node sees
        cmd = [sys.executable, "-m", "vaeflow.cli", "train", "--preset", str(TINY), "--root", str(project),
               "--no-progress", "--set", f"train.epochs={EPOCHS}", "--set", "train.max_failures=2",
               "--set", "train.checkpoint_every_steps=4",
               "--set", f"tracking.uri=sqlite:///{project}/mlflow.db",
               "--set", f"tracking.artifact_location={project}/mlartifacts", "--set", f"train.storage_path={storage}"]
        driver = subprocess.Popen(cmd, cwd=project, env=env | {"RAY_ADDRESS": gcs},
                                  stdout=open(tmp_path / "driver.log", "w"), stderr=subprocess.STDOUT,
                                  start_new_session=True)
        try:
            def placed():
                workers = [a for a in _state(dashboard, "actors")
                           if a["class_name"] == "RayTrainWorker" and a["state"] == "ALIVE"]
                return workers if len(workers) == 2 else None

            workers = _wait("two training workers", placed, 180, tmp_path / "driver.log")
            names = _alive_nodes(dashboard)
            placement = sorted(names[w["node_id"]] for w in workers)
            print("workers placed on", placement)
            assert placement == ["node_a", "node_b"]  # one worker on each node

            # Mid-epoch: just after the first mid-epoch checkpoint (step 4 of epoch 1's 8) is persisted.
            _wait("the first checkpoint", lambda: list(storage.glob("*/checkpoint_*/")), 180, tmp_path / "driver.log")
            timeline["kill"] = time.monotonic()
            nodes.kill("node_b")
            _wait("the lost node to be declared dead", lambda: "node_b" not in _alive_nodes(dashboard).values(), 120)
            timeline["dead"] = time.monotonic()
            # One CPU is left for two one-CPU workers: Ray Train waits for resources; a new node lets it go on.
            nodes.start("node_c", f"--address={gcs}")
            _wait("the replacement node", lambda: "node_c" in _alive_nodes(dashboard).values(), 120, tmp_path / "node_c.log")
            timeline["joined"] = time.monotonic()

            def replaced():
                workers = placed()
                return workers if workers and {_alive_nodes(dashboard).get(w["node_id"]) for w in workers} == {"node_a", "node_c"} else None

            _wait("the worker group on the replacement", replaced, 240, tmp_path / "driver.log")
            timeline["restarted"] = time.monotonic()
            assert driver.wait(timeout=600) == 0, (tmp_path / "driver.log").read_text()[-3000:]
            timeline["done"] = time.monotonic()
        finally:
            if driver.poll() is None:
                os.killpg(driver.pid, signal.SIGKILL)
                driver.wait()
    finally:
        nodes.stop_all()
    t0 = timeline["kill"]
    print({k: round(v - t0, 1) for k, v in timeline.items()})

    run = json.loads((project / "models/image/run.json").read_text())
    client = MlflowClient(f"sqlite:///{project}/mlflow.db")
    exp = client.get_experiment_by_name("vaeflow-image")
    assert len(client.search_runs([exp.experiment_id])) == 1
    steps = sorted(m.step for m in client.get_metric_history(run["mlflow_run_id"], "val_neg_elbo"))
    assert steps == list(range(1, EPOCHS + 1))  # every epoch once (vaeflow's steps count finished epochs)
    assert client.get_run(run["mlflow_run_id"]).info.status == "FINISHED"
    versions = client.search_model_versions("name='vaeflow-image'")
    assert [v.run_id for v in versions] == [run["mlflow_run_id"]]
