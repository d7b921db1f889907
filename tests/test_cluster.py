"""A real Ray head on 127.0.0.1 with token authentication: submit a training job and find its MLflow run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import TINY


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
