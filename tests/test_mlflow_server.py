"""Training against a real MLflow tracking server on 127.0.0.1, read back through its REST API and UI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import urllib.parse
import urllib.request

import mlflow
import numpy as np
import pytest

from vaeflow import stages
from tests.conftest import tiny_config
from tests.team_server import wait_until_healthy


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(base: str, endpoint: str, **query: str) -> dict:
    with urllib.request.urlopen(f"{base}{endpoint}?{urllib.parse.urlencode(query)}", timeout=30) as resp:
        return json.loads(resp.read())


# A real tracking server, a training job logged to it and the UI in Chromium: about 75 s in all,
# so -m slow (CI runs it after the default suite).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` with one worker, a SQLite backend and a local (proxied) artifact root."""
    d = tmp_path_factory.mktemp("mlflow_server")
    port = _free_port()
    proc = subprocess.Popen(
        ["mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{d}/server.db", "--artifacts-destination", str(d / "artifacts")],
        stdout=open(d / "server.log", "w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    wait_until_healthy(proc, url, d / "server.log")
    yield url
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def trained_on_server(mlflow_server, tiny_data, tmp_path_factory, ray_cluster):
    root = tmp_path_factory.mktemp("server_project")
    (root / "data/processed").mkdir(parents=True)
    (root / "data/processed/image").symlink_to(tiny_data / "data/processed/image")
    config = tiny_config(root, f"tracking.uri={mlflow_server}", "train.epochs=2")
    paths = stages.Paths.for_modality("image", root)
    stages.train(config, paths, progress=False)
    stages.sample(config, paths)
    stages.classifier(config, paths)
    stages.evaluate(config, paths, progress=False)
    run = json.loads((paths.model / "run.json").read_text())
    return config, run, root


def test_run_and_model_read_back_through_the_rest_api(mlflow_server, trained_on_server):
    config, run, _ = trained_on_server
    got = _get(mlflow_server, "/api/2.0/mlflow/runs/get", run_id=run["mlflow_run_id"])["run"]
    params = {p["key"]: p["value"] for p in got["data"]["params"]}
    tags = {t["key"]: t["value"] for t in got["data"]["tags"]}
    metrics = {m["key"]: m["value"] for m in got["data"]["metrics"]}
    assert got["info"]["status"] == "FINISHED"
    assert params["train.epochs"] == "2" and params["tracking.uri"] == mlflow_server
    assert tags["vaeflow.modality"] == "image" and tags["git_commit"]
    assert {"val_neg_elbo", "test_nll_iwae", "test_neg_elbo"} <= set(metrics)
    history = _get(mlflow_server, "/api/2.0/mlflow/metrics/get-history", run_id=run["mlflow_run_id"], metric_key="val_neg_elbo")
    assert sorted(m["step"] for m in history["metrics"]) == [1, 2]
    files = _get(mlflow_server, "/api/2.0/mlflow/artifacts/list", run_id=run["mlflow_run_id"], path="evaluation")
    assert {"evaluation/reconstructions.png", "evaluation/latent_pca.png"} <= {f["path"] for f in files["files"]}
    version = _get(mlflow_server, "/api/2.0/mlflow/registered-models/alias", name=config.tracking.registered_model,
                   alias=config.tracking.alias)["model_version"]
    assert version["run_id"] == run["mlflow_run_id"] and version["version"] == run["model_version"]
    assert {t["key"] for t in version["tags"]} >= {"modality", "data_sha256", "git_commit", "test_nll_iwae"}


def test_registered_model_loads_and_serves_offline(mlflow_server, trained_on_server, tmp_path):
    config, _, _ = trained_on_server
    uri = f"models:/{config.tracking.registered_model}@{config.tracking.alias}"
    mlflow.set_tracking_uri(mlflow_server)
    x = np.random.default_rng(0).random((2, 1, 28, 28), dtype=np.float32)
    expected = mlflow.pyfunc.load_model(uri).predict(x)
    (tmp_path / "in.json").write_text(json.dumps({"inputs": x.tolist()}))
    proc = subprocess.run(
        ["mlflow", "models", "predict", "-m", uri, "-i", str(tmp_path / "in.json"), "-t", "json",
         "-o", str(tmp_path / "out.json"), "--env-manager", "local"],
        env=os.environ | {"MLFLOW_TRACKING_URI": mlflow_server}, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    served = np.asarray(json.loads((tmp_path / "out.json").read_text())["predictions"])
    assert served.shape == (2, config.model.latent_dim)
    assert np.allclose(served, expected, atol=1e-5)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# The flags this machine's network needs (no background requests to the outside) plus headless mode.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--virtual-time-budget=20000", "--window-size=1400,1000"]


def _render(url: str, tmp_path, name: str) -> str:
    """The page's DOM after its scripts ran, and a screenshot of it saved as ``name``.png."""
    common = [CHROMIUM, *CHROMIUM_FLAGS]
    shot = subprocess.run([*common, f"--user-data-dir={tmp_path / (name + '-a')}", f"--screenshot={tmp_path / name}.png", url],
                          capture_output=True, timeout=120)
    assert shot.returncode == 0, shot.stderr[-2000:]
    assert (tmp_path / f"{name}.png").stat().st_size > 20_000  # a rendered page, not a blank one
    dom = subprocess.run([*common, f"--user-data-dir={tmp_path / (name + '-b')}", "--dump-dom", url],
                         capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    return dom.stdout


@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"), reason="Debian's chromium is not installed")
def test_mlflow_ui_shows_the_run_and_the_registered_model(mlflow_server, trained_on_server, tmp_path):
    assert CHROMIUM, "CI installs Debian's chromium (see .ci/run); it is missing"
    config, run, _ = trained_on_server
    exp = _get(mlflow_server, "/api/2.0/mlflow/experiments/get-by-name", experiment_name=config.tracking.experiment)
    run_url = f"{mlflow_server}/#/experiments/{exp['experiment']['experiment_id']}/runs/{run['mlflow_run_id']}"
    page = _render(run_url, tmp_path, "run")
    run_name = _get(mlflow_server, "/api/2.0/mlflow/runs/get", run_id=run["mlflow_run_id"])["run"]["info"]["run_name"]
    for text in (run_name, "Finished", "val_neg_elbo", "test_nll_iwae", "git_commit", config.tracking.registered_model):
        assert text in page, f"{text!r} not on the run page"
    artifacts = _render(run_url + "/artifacts", tmp_path, "artifacts")
    for text in ("evaluation", "plots", "samples"):
        assert text in artifacts, f"{text!r} not on the artifacts page"
    model_page = _render(f"{mlflow_server}/#/models/{config.tracking.registered_model}", tmp_path, "model")
    for text in (config.tracking.registered_model, f"Version {run['model_version']}", config.tracking.alias):
        assert text in model_page, f"{text!r} not on the registered model's page"
