"""Training against a real MLflow tracking server on 127.0.0.1, read back through its REST API and UI."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.parse
import urllib.request

import mlflow
import numpy as np
import pytest

from tests.conftest import free_port, stop_process_group
from tests.mlflow_ui import needs_chromium, pipeline_on, review_in_browser
from tests.team_server import wait_until_healthy


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
    port = free_port()
    proc = subprocess.Popen(
        ["mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{d}/server.db", "--artifacts-destination", str(d / "artifacts")],
        stdout=open(d / "server.log", "w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    wait_until_healthy(proc, url, d / "server.log")
    yield url
    stop_process_group(proc)


@pytest.fixture(scope="module")
def trained_on_server(mlflow_server, tiny_data, tmp_path_factory, ray_cluster):
    root = tmp_path_factory.mktemp("server_project")
    config, run = pipeline_on(mlflow_server, tiny_data, root)
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


@needs_chromium
def test_mlflow_ui_shows_the_run_and_the_registered_model(mlflow_server, trained_on_server, tmp_path):
    config, run, _ = trained_on_server
    review_in_browser(mlflow_server, config, run, tmp_path)
