"""The family seam: a family defined in this file alone (a deterministic autoencoder with an L2
penalty on z) trains through Ray Train (2 workers), logs to one MLflow run and serves through the
pyfunc model, with no change to vaeflow.

Ray workers find it because the driver records the module that registered the family and each
worker imports it (``vaeflow.models.families.get(name, module)``); a packaged family would declare
a ``vaeflow.plugins`` entry point instead, which every process loads.
"""

from __future__ import annotations

import json
import math
from typing import Any

import mlflow
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vaeflow import registry, stages, tracking
from vaeflow.models.families import Family, FamilyOptimizer, Objective, build_model, family_of, unwrap
from tests.conftest import tiny_config

L2_WEIGHT = 0.01


class _Autoencoder(nn.Module):
    """x → z = encoder(x) → decoder logits; unconditional, so no condition attributes are set."""

    def __init__(self, channels: int, height: int, width: int, latent_dim: int):
        super().__init__()
        self.shape = (channels, height, width)
        self.latent_dim, self.num_classes, self.condition_dim = latent_dim, 0, 0
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(channels * height * width, 32), nn.ReLU(), nn.Linear(32, latent_dim))
        self.decoder = nn.Sequential(nn.Linear(latent_dim, 32), nn.ReLU(), nn.Linear(32, channels * height * width))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encoder(x)
        return z, self.decoder(z).reshape(-1, *self.shape)  # (N, C·H·W) → (N, C, H, W)


@registry.FAMILIES.register("test_l2_autoencoder")
class L2Autoencoder(Family):
    """Deterministic autoencoder: Bernoulli reconstruction + L2_WEIGHT · ‖z‖², selected on the
    validation reconstruction; the base class's single Adam, with a per-step LR schedule added."""

    score = "recon"
    reported = ("recon", "l2")
    summary = ("l2",)

    def build(self, model_config: Any, input_spec: dict[str, Any]) -> nn.Module:
        return _Autoencoder(input_spec["channels"], input_spec["height"], input_spec["width"], model_config.latent_dim)

    def terms(self, model, inputs, *, config, generator):
        z, logits = model(inputs.x)  # through the (DDP) wrapper, so gradients are synchronised
        recon = F.binary_cross_entropy_with_logits(logits.float(), inputs.target, reduction="none").flatten(1).sum(1).mean()
        return {"recon": recon, "l2": z.float().pow(2).sum(1).mean()}

    def objective(self, config, epoch):
        return Objective(weights={"model": {"recon": 1.0, "l2": L2_WEIGHT}})

    def optimizers(self, model, train_config):
        (opt,) = super().optimizers(model, train_config)
        return [FamilyOptimizer(opt.name, opt.optimizer, torch.optim.lr_scheduler.StepLR(opt.optimizer, 1, gamma=0.999))]

    def sample(self, model, n, *, labels=None, temperature=1.0, generator=None, mean=True):
        device = next(model.parameters()).device
        return self.decode(model, temperature * torch.randn(n, model.latent_dim, generator=generator, device=device))

    def encode(self, model, x, labels=None):
        return unwrap(model).encoder(x)

    def decode(self, model, z, labels=None, *, mean=True, generator=None):  # a deterministic decoder: no draws
        return torch.sigmoid(unwrap(model).decoder(z)).reshape(-1, *unwrap(model).shape)


def test_a_family_defined_in_a_test_file_trains_through_ray_mlflow_and_the_pyfunc(project, ray_cluster):
    config = tiny_config(project, "model.family=test_l2_autoencoder", "train.epochs=2", "loss.warmup_epochs=0")
    paths = stages.Paths.for_modality("image", project)
    metrics = stages.train(config, paths, progress=False)

    # The stage's summary speaks the family's names: its score and its summary terms.
    assert set(metrics) >= {"best_val_recon", "final_train_recon", "final_val_recon", "final_val_l2"}
    assert "best_val_neg_elbo" not in metrics
    history = list(csv_rows(paths.plots / "history.csv"))
    assert [int(r["epoch"]) for r in history] == [1, 2]
    assert set(history[0]) == {"epoch", "epoch_time_s", "train_examples_per_s", "train_loss", "train_recon",
                               "train_l2", "val_loss", "val_recon", "val_l2"}
    for row in history:  # the loop summed the family's weighted terms
        assert float(row["val_loss"]) == pytest.approx(float(row["val_recon"]) + L2_WEIGHT * float(row["val_l2"]), rel=1e-5)
    assert float(history[1]["val_recon"]) < float(history[0]["val_recon"])  # it trained

    run = json.loads((paths.model / "run.json").read_text())
    client = tracking.client(config.tracking)
    assert sorted(m.step for m in client.get_metric_history(run["mlflow_run_id"], "val_l2")) == [1, 2]
    assert client.get_run(run["mlflow_run_id"]).data.params["model.family"] == "test_l2_autoencoder"

    # The checkpoint holds the optimizer and its schedule: 8 steps per epoch (512 / 64) over 2 epochs.
    from vaeflow.training import checkpoint

    (run_dir,) = (project / "ray_results").iterdir()
    latest = checkpoint.load(max(d for d in run_dir.glob("checkpoint_*") if d.is_dir()))
    assert latest["schedulers"][0]["last_epoch"] == 16 and len(latest["optimizers"]) == 1

    # The pyfunc model asks the family: encode → z, reconstruct → sigmoid means, sample.
    served = mlflow.pyfunc.load_model(f"models:/{config.tracking.registered_model}@{config.tracking.alias}")
    x = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
    model, _, _ = checkpoint.load_model(paths.model / "model.pt")
    assert isinstance(family_of(model), L2Autoencoder)
    with torch.no_grad():
        np.testing.assert_allclose(served.predict(x), model.encoder(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-6)
    recon = served.predict(x, params={"mode": "reconstruct"})
    assert recon.shape == (3, 1, 28, 28) and 0 <= recon.min() and recon.max() <= 1
    samples = served.predict(x, params={"mode": "sample", "n": 5, "seed": 1})
    assert samples.shape == (5, 1, 28, 28)

    # sample and evaluate (figures from the family's verbs; no likelihood, so no IWAE NLL) log into the same run.
    assert stages.sample(config, paths)["n_samples"] == config.sample.n
    stages.classifier(config, paths)  # FD and precision/recall sample through the family too
    ev = stages.evaluate(config, paths, progress=False)
    quality = {f"{m}{s}" for m in ("fd", "precision", "recall") for s in ("", "_train_vs_test", "_blurred_test")}
    assert set(ev) == {"test_recon", "test_l2", "n_test", "n_fd_samples", "n_fd_train", "classifier_test_accuracy"} | quality
    assert {a.path for a in client.list_artifacts(run["mlflow_run_id"], "evaluation")} >= {
        "evaluation/reconstructions.png", "evaluation/interpolation.png", "evaluation/latent_pca.png"}


def test_an_unknown_family_is_one_config_error(tmp_path):
    from vaeflow.config import ConfigError

    with pytest.raises(ConfigError, match=r"model.family: unknown family 'nope'; allowed: .*test_l2_autoencoder.*vae"):
        tiny_config(tmp_path, "model.family=nope")


def test_the_family_is_rebuilt_by_name_with_its_own_terms(tmp_path):
    """No Ray: the config's family builds the model, and the loop reports its terms."""
    config = tiny_config(tmp_path, "model.family=test_l2_autoencoder")
    model = build_model(config.model, {"channels": 1, "height": 28, "width": 28})
    assert isinstance(model, _Autoencoder) and model.family_name == "test_l2_autoencoder"
    assert math.isclose(family_of(model).objective(config, 0.0).weights["model"]["l2"], L2_WEIGHT)


def csv_rows(path):
    import csv

    with open(path, newline="") as f:
        yield from csv.DictReader(f)


@registry.FAMILIES.register("test_two_optimizer_autoencoder")
class TwoOptimizerAutoencoder(L2Autoencoder):
    """The same autoencoder with two optimizers: the encoder minimises recon + L2, the decoder recon alone."""

    def objective(self, config, epoch):
        return Objective(weights={"encoder": {"recon": 1.0, "l2": L2_WEIGHT}, "decoder": {"recon": 1.0}})

    def optimizers(self, model, train_config):
        return [FamilyOptimizer(name, torch.optim.Adam(getattr(model, name).parameters(), lr=train_config.lr))
                for name in ("encoder", "decoder")]


@pytest.mark.slow
def test_a_family_with_two_optimizers_trains_under_ddp(project, ray_cluster):
    """Each loss reaches only its own optimizer's parameters, every optimizer's state is checkpointed,
    and both losses are logged (``loss_<name>``), with 2 DDP workers. One fit (about 45 s): ``-m slow``."""
    from vaeflow.training import checkpoint
    from vaeflow.training.ray import fit

    config = tiny_config(project, "model.family=test_two_optimizer_autoencoder", "train.epochs=2")
    run_id = tracking.start_run(config, {}, run_name="two-optimizers")
    result = fit(config, project / "data/processed/image", run_name="two-optimizers", run_id=run_id, progress=False)
    row = result.history[-1]
    assert {"train_loss_encoder", "train_loss_decoder", "val_loss_encoder", "val_loss_decoder"} <= set(row)
    assert row["val_loss_decoder"] == pytest.approx(row["val_recon"])
    assert row["val_loss_encoder"] == pytest.approx(row["val_recon"] + L2_WEIGHT * row["val_l2"], rel=1e-5)
    assert result.history[1]["val_recon"] < result.history[0]["val_recon"]
    state = checkpoint.load(result.latest)
    assert len(state["optimizers"]) == 2 and all(s["state"] for s in state["optimizers"])
