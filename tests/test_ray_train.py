"""Ray Train with 2 CPU workers on real data: checkpoints, resume, one MLflow run, a loadable model."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from vaeflow import stages, tracking
from vaeflow.training import checkpoint
from vaeflow.training.ray import SCORE, fit
from tests.conftest import tiny_config


def _steps(client: MlflowClient, run_id: str, key: str = SCORE) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_train_stage_two_workers_one_run_registered_model(project, ray_cluster):
    config = tiny_config(project, "train.epochs=2")
    paths = stages.Paths.for_modality("image", project)
    metrics = stages.train(config, paths, progress=False)

    assert metrics["epochs"] == 2 and 1 <= metrics["best_epoch"] <= 2
    run = json.loads((paths.model / "run.json").read_text())
    ray_run = project / "ray_results"
    (run_dir,) = ray_run.iterdir()
    assert len([d for d in run_dir.glob("checkpoint_*") if d.is_dir()]) == 2  # one per epoch, keep_checkpoints = 2

    client = tracking.client(config.tracking)
    exp = client.get_experiment_by_name(config.tracking.experiment)
    runs = client.search_runs([exp.experiment_id])
    assert [r.info.run_id for r in runs] == [run["mlflow_run_id"]]  # exactly one run for the job
    r = runs[0]
    assert r.info.status == "FINISHED"
    assert r.data.params["train.num_workers"] == "2" and r.data.params["model.encoder.name"] == "conv2d"
    assert r.data.tags["git_commit"] and len(r.data.tags["vaeflow.data_sha256"]) == 64
    assert _steps(client, r.info.run_id) == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(r.info.run_id, "plots")}
    assert artifacts == {"plots/training_curves.png", "plots/history.csv"}

    # The registered model answers encode / reconstruct / sample, rebuilt from config + state dict.
    model = mlflow.pyfunc.load_model(f"models:/{config.tracking.registered_model}@{config.tracking.alias}")
    assert model.metadata.signature is not None
    x = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
    assert model.predict(x).shape == (3, config.model.latent_dim)
    assert model.predict(x, params={"mode": "reconstruct"}).shape == (3, 1, 28, 28)
    s1 = model.predict(x, params={"mode": "sample", "n": 5, "seed": 1})
    assert s1.shape == (5, 1, 28, 28) and np.array_equal(s1, model.predict(x, params={"mode": "sample", "n": 5, "seed": 1}))
    version = client.get_model_version_by_alias(config.tracking.registered_model, config.tracking.alias)
    assert version.run_id == r.info.run_id and version.tags["modality"] == "image"

    # The stage's model file loads with weights_only and matches the best epoch.
    best = checkpoint.load(paths.model / "model.pt")
    assert best["epoch"] == metrics["best_epoch"] and "optimizer" not in best

    # sample and evaluate log into the same run.
    stages.sample(config, paths)
    ev = stages.evaluate(config, paths, progress=False)
    assert ev["iwae_k"] == 10 and ev["test_nll_iwae"] <= ev["iwae_subset_neg_elbo"] + 1e-3
    assert len(client.search_runs([exp.experiment_id])) == 1
    logged = client.get_run(r.info.run_id).data.metrics
    assert logged["test_nll_iwae"] == pytest.approx(ev["test_nll_iwae"])
    assert {a.path for a in client.list_artifacts(r.info.run_id, "evaluation")} >= {
        "evaluation/reconstructions.png", "evaluation/interpolation.png", "evaluation/latent_pca.png"}

    # A finished job is not resumed: the same config starts a new attempt (a new Ray run name).
    name, new_run = stages._resume_or_start(config, tracking.lineage_tags(config, paths.processed))
    assert name == run_dir.name + "-2" and new_run != r.info.run_id


@pytest.mark.slow
def test_resume_continues_from_the_latest_checkpoint(project, ray_cluster):
    """Two fits (about 35 s): ``-m slow``. The default suite covers resuming with more epochs (the
    NaN test), by the same command after a kill (test_fault_tolerance) and exactly (test_loop)."""
    config1 = tiny_config(project, "train.epochs=1")
    config3 = tiny_config(project, "train.epochs=3")
    run_id = tracking.start_run(config1, {}, run_name="resume-test")
    processed = project / "data/processed/image"
    first = fit(config1, processed, run_name="resume-test", run_id=run_id, progress=False)
    assert [row["epoch"] for row in first.history] == [1]

    resumed = fit(config3, processed, run_name="resume-test", run_id=run_id, progress=False)
    assert [row["epoch"] for row in resumed.history] == [1, 2, 3]
    assert resumed.history[0] == first.history[0]  # epoch 1 came from the checkpoint, not a rerun
    client = tracking.client(config1.tracking)
    assert _steps(client, run_id) == [1, 2, 3]  # continuous: no duplicate, no gap
    # keep_checkpoints = 2 ranks by validation −ELBO, but the latest is always kept for resume.
    state = checkpoint.load(resumed.latest)
    assert state["epoch"] == 3 and set(state) >= {"model", "optimizer", "config", "history", "mlflow_run_id"}
    best = checkpoint.load(resumed.best)
    assert best["history"][-1][SCORE] == min(row[SCORE] for row in resumed.history[: best["epoch"]])
    model, _, _ = checkpoint.load_model(resumed.latest)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_class_conditional_model_is_logged_and_served_with_a_label(tmp_path):
    """The model logging step encodes its input example the way the served model does: a conditional
    model gets the default label (it used to call encode without one and fail after training)."""
    from vaeflow.models.vae import build_model

    config = tiny_config(tmp_path, "model.conditional=true")
    spec = {"channels": 1, "height": 28, "width": 28, "num_classes": 10}
    torch.manual_seed(0)
    model = build_model(config.model, spec)
    model_file = tmp_path / "model.pt"
    checkpoint.save(model_file, model=model.state_dict(), config=config.to_dict(), input_spec=spec, epoch=1)
    run_id = tracking.start_run(config, {}, run_name="conditional")
    example = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
    version = stages._log_model(config, run_id, model_file, example, {})
    served = mlflow.pyfunc.load_model(f"models:/{config.tracking.registered_model}/{version}")
    x = torch.from_numpy(example)
    for label in (0, 7):
        expected = model.eval().encode(x, torch.full((3,), label)).mu.detach().numpy()
        np.testing.assert_allclose(served.predict(example, params={"label": label}), expected, rtol=1e-5, atol=1e-6)
