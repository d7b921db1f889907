"""Ray Train with 2 CPU workers on real data: checkpoints, resume, one MLflow run, a loadable model."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from vaeflow import stages, tracking
from vaeflow.config import ConfigError
from vaeflow.serving import PREDICT_PARAMS
from vaeflow.training import checkpoint
from vaeflow.training.ray import SCORE, _out_of_time, fit
from tests.conftest import cpu_has_native_bf16, ray_processes, tiny_config


def _steps(client: MlflowClient, run_id: str, key: str = SCORE) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


class _ControllerWatch(threading.Thread):
    """While a job runs, reads which shared libraries this cluster's Ray Train controller has
    mapped (``/proc/<pid>/maps``): a controller that imported torch maps libtorch."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.looks, self.torch, self.done = 0, set(), threading.Event()  # torch: (pid, library) seen

    def run(self) -> None:
        while not self.done.wait(0.1):
            for proc in ray_processes("ray::TrainController"):
                try:
                    maps = Path(f"/proc/{proc.pid}/maps").read_text()
                except OSError:  # ended while we looked
                    continue
                self.looks += 1
                self.torch |= {(proc.pid, line.split()[-1]) for line in maps.splitlines() if "libtorch" in line}

    def __enter__(self) -> _ControllerWatch:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.join()


def test_train_stage_two_workers_one_run_registered_model(project, ray_cluster):
    config = tiny_config(project, "train.epochs=2", "train.precision=auto")
    paths = stages.Paths.for_modality("image", project)
    with _ControllerWatch() as controller:
        metrics = stages.train(config, paths, progress=False)
    # The private cluster's controller orchestrates without torch (training.backend): only the workers
    # and the driver pay for it.
    assert controller.looks and not controller.torch, (controller.looks, sorted(controller.torch))

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
    # "auto" was decided on the workers' device, and each epoch says what it was.
    chosen = [m.value for m in client.get_metric_history(r.info.run_id, "autocast_bf16")]
    assert chosen == [float(cpu_has_native_bf16())] * 2
    artifacts = {a.path for a in client.list_artifacts(r.info.run_id, "plots")}
    assert artifacts == {"plots/training_curves.png", "plots/history.csv"}

    # The registered model answers encode / reconstruct / sample, rebuilt from config + state dict.
    model = mlflow.pyfunc.load_model(f"models:/{config.tracking.registered_model}@{config.tracking.alias}")
    # The logged signature is the served contract: image tensors in, latent codes out, the predict params.
    signature = model.metadata.signature.to_dict()
    assert json.loads(signature["inputs"]) == [{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 1, 28, 28]}}]
    assert json.loads(signature["outputs"]) == [
        {"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, config.model.latent_dim]}}]
    assert {p["name"]: p["default"] for p in json.loads(signature["params"])} == PREDICT_PARAMS
    x = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
    assert model.predict(x).shape == (3, config.model.latent_dim)
    assert model.predict(x, params={"mode": "reconstruct"}).shape == (3, 1, 28, 28)
    s1 = model.predict(x, params={"mode": "sample", "n": 5, "seed": 1})
    assert s1.shape == (5, 1, 28, 28) and np.array_equal(s1, model.predict(x, params={"mode": "sample", "n": 5, "seed": 1}))
    version = client.get_model_version_by_alias(config.tracking.registered_model, config.tracking.alias)
    assert version.run_id == r.info.run_id and version.tags["modality"] == "image"

    # The stage's model file loads with weights_only and matches the best epoch.
    best = checkpoint.load(paths.model / "model.pt")
    assert best["epoch"] == metrics["best_epoch"] and not {"optimizers", "schedulers"} & set(best)

    # sample and evaluate log into the same run.
    stages.sample(config, paths)
    stages.classifier(config, paths)
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
    assert state["epoch"] == 3 and set(state) >= {"model", "optimizers", "schedulers", "config", "history", "mlflow_run_id"}
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


def test_a_training_split_smaller_than_one_batch_per_worker_stops_before_training(project):
    """512 training examples cannot fill a batch of 2048 / 2 workers: no step would train, yet the job
    used to report −ELBO 0.00, exit 0 and register the model. Now one line, before any run starts."""
    config = tiny_config(project, "train.batch_size=2048")
    paths = stages.Paths.for_modality("image", project)
    with pytest.raises(ConfigError, match=r"512 examples, fewer than one batch per worker .*1024 each.*lower train.batch_size"):
        stages.train(config, paths, progress=False)
    assert not paths.model.exists()
    exp = tracking.client(config.tracking).get_experiment_by_name(config.tracking.experiment)
    assert exp is None or not tracking.client(config.tracking).search_runs([exp.experiment_id])


def _saved_model(tmp_path):
    from vaeflow.models.families import build_model

    config = tiny_config(tmp_path)
    spec = {"channels": 1, "height": 28, "width": 28, "num_classes": 10}
    model = build_model(config.model, spec)
    path = tmp_path / "models" / "image" / "model.pt"
    path.parent.mkdir(parents=True)
    checkpoint.save(path, model=model.state_dict(), config=config.to_dict(), input_spec=spec, epoch=1)
    return config, path


DEVICES = ["cpu", "meta"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_load_model_puts_the_model_on_the_requested_device(tmp_path, device):
    """sample/evaluate draw on ``stages._device`` (cuda under train.use_gpu): the model must be there
    too. ``meta`` is a device every machine has, so the CPU suite checks that the argument is honoured."""
    _, path = _saved_model(tmp_path)
    model, _, _ = checkpoint.load_model(path, torch.device(device))
    assert {p.device.type for p in model.parameters()} == {device}
    assert not model.training


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (defect 1 end to end)")
def test_sample_and_evaluate_run_on_the_gpu_under_use_gpu(project):
    """Under train.use_gpu the stages draw on cuda: the model must be loaded there too."""
    config = tiny_config(project, "train.use_gpu=true")
    paths = stages.Paths.for_modality("image", project)
    _, model_file = _saved_model(project)
    run_id = tracking.start_run(config, {}, run_name="gpu")
    example = np.random.default_rng(0).random((4, 1, 28, 28), dtype=np.float32)
    version = stages._log_model(config, run_id, model_file, example, {})
    (paths.model / "run.json").write_text(json.dumps(
        {"mlflow_run_id": run_id, "registered_model": config.tracking.registered_model, "model_version": version}))
    model, _ = stages._load_trained(paths, config)
    assert {p.device.type for p in model.parameters()} == {"cuda"}
    assert stages.sample(config, paths)["n_samples"] == config.sample.n
    stages.classifier(config, paths)
    ev = stages.evaluate(config, paths, progress=False)
    assert np.isfinite(ev["test_nll_iwae"]) and np.isfinite(ev["test_neg_elbo"]) and np.isfinite(ev["fd"])


@pytest.mark.parametrize("modality", ["image", "timeseries", "molecule"])
def test_a_missing_model_names_the_train_stage_of_its_modality(tmp_path, modality):
    """``vaeflow anomaly`` / ``optimize`` without a model used to be told to run train@image."""
    with pytest.raises(FileNotFoundError, match=rf"dvc repro train@{modality}\b"):
        checkpoint.load_model(tmp_path / "models" / modality / "model.pt")
    with pytest.raises(FileNotFoundError, match=rf"train@{modality}\b"):
        checkpoint.load(tmp_path / "elsewhere.pt", modality=modality)


def test_out_of_time_only_past_the_budget():
    assert not _out_of_time(None, 1e9, torch.device("cpu"))
    assert not _out_of_time(1.0, 59.9, torch.device("cpu"))
    assert _out_of_time(1.0, 60.0, torch.device("cpu"))


@pytest.mark.slow
def test_a_time_limit_stops_both_workers_at_one_epoch_and_the_same_command_continues(project, ray_cluster):
    """train.time_limit_minutes: a budget spent during epoch 1 ends the job after it on both workers
    (their clocks all-reduced) with a registered model; the same train command resumes that job (same
    Ray run, same MLflow run) and trains one more epoch. About 40 s."""
    config = tiny_config(project, "train.epochs=3", "train.time_limit_minutes=0.0001")
    paths = stages.Paths.for_modality("image", project)
    first = stages.train(config, paths, progress=False)
    run = json.loads((paths.model / "run.json").read_text())
    assert first["epochs"] == 1 and run["model_version"] == "1"
    again = stages.train(config, paths, progress=False)
    assert again["epochs"] == 2
    assert json.loads((paths.model / "run.json").read_text())["mlflow_run_id"] == run["mlflow_run_id"]
    assert checkpoint.load(paths.model / "model.pt")["epoch"] in (1, 2)  # the better of the two
    c = tracking.client(config.tracking)
    steps = [m.step for m in c.get_metric_history(run["mlflow_run_id"], "val_neg_elbo")]
    assert sorted(steps) == [1, 2]  # each epoch logged once, across the two starts


def test_a_private_cluster_trains_without_the_helper_actors_it_cannot_use(ray_cluster):
    """init_ray's private cluster leaves out Ray Train's placement-group cleaner, dataset manager and
    autoscaler requests (processes a cluster that dies with its driver has no use for). Ray's own
    default list must still hold the callbacks filtered, or the filter would silently do nothing
    after a Ray upgrade that renamed them."""
    import ray.train
    import ray.train.torch

    from vaeflow.training import ray as vray

    assert vray._trainer_class() is vray._PrivateClusterTrainer

    def build(cls):
        return cls(lambda: None, scaling_config=ray.train.ScalingConfig(num_workers=1))

    names = lambda callbacks: {type(c).__name__ for c in callbacks}  # noqa: E731
    ray_default = names(build(ray.train.torch.TorchTrainer)._create_default_callbacks())
    lean = names(build(vray._PrivateClusterTrainer)._create_default_callbacks())
    assert set(vray._PrivateClusterTrainer._UNUSED_CALLBACKS) <= ray_default
    assert not set(vray._PrivateClusterTrainer._UNUSED_CALLBACKS) & lean
    assert "BackendSetupCallback" in lean and "UserCallbackHandler" in lean  # Ray Train's own still run
    policy = vray._FixedScalingWithoutAutoscaler(ray.train.ScalingConfig(num_workers=1))
    policy.after_controller_start(None)
    policy.make_decision_for_non_running_worker_group()  # no coordinator client needed


def test_a_joined_cluster_keeps_the_helpers_that_serve_it_and_drops_the_dataset_manager(ray_cluster, monkeypatch):
    """On a cluster the job joined (``RAY_ADDRESS``: a `ray start` head, a later DVC stage), the job
    keeps Ray Train's placement-group cleaner and autoscaler requests (the cluster outlives it) but
    still starts no dataset manager and no torch in its controller; ``VAEFLOW_RAY_LEAN=0`` gives
    Ray's own trainer anywhere."""
    import ray.train
    import ray.train.torch

    from vaeflow.training import ray as vray
    from vaeflow.training.backend import TorchWorkersConfig

    monkeypatch.setattr(vray, "_private_cluster", False)
    assert vray._trainer_class() is vray._LeanTrainer
    trainer = vray._LeanTrainer(lambda: None, scaling_config=ray.train.ScalingConfig(num_workers=1))
    names = {type(c).__name__ for c in trainer._create_default_callbacks()}
    assert "PlacementGroupCleanerCallback" in names and "DatasetsCallback" not in names
    assert isinstance(trainer.backend_config, TorchWorkersConfig)
    assert "_initialize_and_run_controller" not in vray._LeanTrainer.__dict__  # its scaling policy is Ray's
    monkeypatch.setenv("VAEFLOW_RAY_LEAN", "0")
    assert vray._trainer_class() is ray.train.torch.TorchTrainer
