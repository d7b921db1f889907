"""Failures during Ray Train: a killed worker, a NaN loss. Nothing lost, nothing logged twice."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import ray
from ray.util.state import list_actors

from vaeflow import tracking
from vaeflow.training import checkpoint
from vaeflow.training.ray import SCORE, TrainingError, fit
from tests.conftest import tiny_config


@pytest.fixture
def processed(tiny_data):
    return tiny_data / "data/processed/image"


def _checkpoint_epochs(run_dir) -> list[int]:
    return sorted(checkpoint.load(d)["epoch"] for d in run_dir.glob("checkpoint_*") if d.is_dir())


def _kill_a_worker_after_first_checkpoint(run_dir, killed: list[int]) -> None:
    """Wait for the first persisted checkpoint, then SIGKILL one training worker found via Ray's state API."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not any(d.is_dir() for d in run_dir.glob("checkpoint_*")):
        time.sleep(0.02)
    # The session's own cluster, by address: other Ray instances may run on the same machine.
    workers = list_actors(address=ray.get_runtime_context().gcs_address,
                          filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
    if workers:
        pid = max(w.pid for w in workers)
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)


def test_killed_worker_restarts_the_group_and_resumes_exactly(tmp_path, processed, ray_cluster):
    epochs = 25
    config = tiny_config(tmp_path, f"train.epochs={epochs}", "train.max_failures=2")
    run_id = tracking.start_run(config, {}, run_name="killed")
    killed: list[int] = []
    killer = threading.Thread(target=_kill_a_worker_after_first_checkpoint, args=(tmp_path / "ray_results/killed", killed))
    killer.start()
    result = fit(config, processed, run_name="killed", run_id=run_id, progress=False)
    killer.join()
    assert killed, "no training worker was found to kill"

    assert [row["epoch"] for row in result.history] == list(range(1, epochs + 1))
    client = tracking.client(config.tracking)
    exp = client.get_experiment_by_name(config.tracking.experiment)
    assert len(client.search_runs([exp.experiment_id])) == 1
    steps = sorted(m.step for m in client.get_metric_history(run_id, SCORE))
    assert steps == list(range(1, epochs + 1))  # no duplicate, no missing epoch

    # Same seed, uninterrupted: the resumed run reaches the same model (data order, binarisation
    # and reparameterisation noise are functions of (seed, epoch, rank); optimizer state is restored).
    ref_id = tracking.start_run(config, {}, run_name="uninterrupted")
    ref = fit(config, processed, run_name="uninterrupted", run_id=ref_id, progress=False)
    assert result.history[-1][SCORE] == pytest.approx(ref.history[-1][SCORE], rel=1e-4)


def test_nan_loss_stops_with_epoch_and_step_and_keeps_the_last_good_checkpoint(tmp_path, processed, ray_cluster):
    good = tiny_config(tmp_path, "train.epochs=1")
    run_id = tracking.start_run(good, {}, run_name="nan")
    fit(good, processed, run_name="nan", run_id=run_id, progress=False)
    # Resuming the same run with an absurd learning rate blows the weights up in the next epoch.
    bad = tiny_config(tmp_path, "train.epochs=3", "train.lr=1e30")
    with pytest.raises(TrainingError) as err:
        fit(bad, processed, run_name="nan", run_id=run_id, progress=False)
    message = str(err.value)
    assert "\n" not in message
    assert "at epoch 2, step" in message and "last good checkpoint is kept" in message
    assert _checkpoint_epochs(tmp_path / "ray_results/nan") == [1]
