"""The VAE-GAN family (Larsen et al. 2016): the paper's loss assignment through the real training
loop, the discriminator's accuracy and GAN losses on known logits, the verbs' shapes, its config
errors, and (slow) two Ray workers through train → MLflow → the registered pyfunc model → evaluate."""

from __future__ import annotations

import copy
import csv
import json
import math
import threading

import mlflow
import numpy as np
import pytest
import torch

from vaeflow import registry, stages, tracking
from vaeflow.config import ConfigError
from vaeflow.models.families import FamilyOptimizer, build_model, family_of
from vaeflow.models.families.vaegan import VAEGAN, disc_accuracy, gan_losses
from vaeflow.training.loop import NonFiniteLossError, run_epoch
from tests.conftest import tiny_config

IMAGE = registry.MODALITIES.get_or_raise("image").data
SPEC = {"channels": 1, "height": 28, "width": 28, "num_classes": 10}
# A small discriminator, so each test stays well under a second; grey pixels (see docs/image.md).
SMALL = ("model.family=vaegan", "data.binarize=false", "model.vaegan.width=4", "model.vaegan.layers=2",
         "model.vaegan.feature_layer=1")


def _setup(tmp_path, *overrides):
    """The config, a fresh model, and one batch of 6 random 8-bit images as the loader gives it."""
    config = tiny_config(tmp_path, *SMALL, *overrides)
    torch.manual_seed(0)
    model = build_model(config.model, SPEC)
    images = torch.randint(0, 256, (6, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    return config, model, (images, torch.arange(6) % 10)


def _inputs(config, batch):
    return IMAGE.model_inputs(batch, config.data, train=False, generator=None)


def test_each_loss_trains_only_its_own_optimizers_parameters(tmp_path):
    """One step of the real loop with SGD(lr=1) moves each optimizer's parameters by exactly minus the
    gradient of its own loss, although the discriminator's loss also reaches the decoder (and the
    reconstruction reaches the discriminator): the loop keeps the paper's assignment."""
    config, model, batch = _setup(tmp_path, "model.conditional=true")
    inputs = _inputs(config, batch)
    family = family_of(model)
    groups = family.optimizers(model, config.train)
    assert [o.name for o in groups] == ["encoder", "decoder", "discriminator"]
    owned = [id(p) for o in groups for p in o.parameters]
    assert sorted(owned) == sorted(id(p) for p in model.parameters())  # a partition of the model
    before = copy.deepcopy(model)

    # What each loss alone would do to every parameter group.
    terms = family.terms(before, inputs, config=config, generator=torch.Generator().manual_seed(2))
    weights = family.objective(config, 0.0).weights
    loss = {name: sum(w * terms[t] for t, w in weights[name].items()) for name in weights}
    params = {o.name: [dict(before.named_parameters())[n] for n, p in model.named_parameters()
                       if any(p is q for q in o.parameters)] for o in groups}
    pairs = [(name, name) for name in loss] + [("discriminator", "decoder"), ("decoder", "discriminator")]
    grad = {(lname, pname): torch.autograd.grad(loss[lname], params[pname], retain_graph=True, allow_unused=True)
            for lname, pname in pairs}
    leak = grad[("discriminator", "decoder")]
    assert any(g is not None and g.abs().sum() > 0 for g in leak), "the test must be able to see a leak"
    assert any(g is not None and g.abs().sum() > 0 for g in grad[("decoder", "discriminator")])

    sgd = [FamilyOptimizer(o.name, torch.optim.SGD(o.parameters, lr=1.0)) for o in groups]
    run_epoch(model, [batch], IMAGE, config, epoch=0, device=torch.device("cpu"),
              generator=torch.Generator().manual_seed(2), optimizer=sgd)
    after = dict(model.named_parameters())
    for o in groups:
        names = [n for n, p in after.items() if any(p is q for q in o.parameters)]
        for n, g in zip(names, grad[(o.name, o.name)]):
            moved = after[n].detach() - dict(before.named_parameters())[n].detach()
            torch.testing.assert_close(moved, -g, rtol=1e-4, atol=1e-6, msg=f"{o.name} loss on {n}")


def test_a_diverging_vaegan_stops_at_the_nan_guard(tmp_path):
    """lr = 1e30 blows the weights up after the first step: the second step's loss is non-finite and
    the loop stops with one line naming the optimizer's loss, the epoch and the step."""
    config, model, batch = _setup(tmp_path, "train.lr=1e30")
    with pytest.raises(NonFiniteLossError, match=r"^loss_\w+ became .* at epoch 1, step 2; training stopped"):
        run_epoch(model, [batch, batch], IMAGE, config, epoch=0, device=torch.device("cpu"),
                  generator=torch.Generator().manual_seed(0), optimizer=family_of(model).optimizers(model, config.train))


def test_disc_accuracy_and_gan_losses_on_known_logits():
    acc_real, acc_fake = disc_accuracy(torch.tensor([2.0, -1.0, 3.0]), torch.tensor([-1.0, -2.0, 0.5, -3.0]))
    assert acc_real.item() == pytest.approx(2 / 3) and acc_fake.item() == pytest.approx(3 / 4)
    # Undecided (logits 0): −log ½ per source, three sources for the discriminator, two fakes for the decoder.
    zero = torch.zeros(5)
    disc, dec = gan_losses(zero, [zero, zero])
    assert disc.item() == pytest.approx(3 * math.log(2)) and dec.item() == pytest.approx(2 * math.log(2))
    # A confident, correct discriminator: its loss vanishes, the decoder's is large.
    disc, dec = gan_losses(torch.full((5,), 20.0), [torch.full((5,), -20.0)] * 2)
    assert disc.item() < 1e-6 and dec.item() == pytest.approx(40.0, rel=1e-3)


def test_terms_verbs_and_shapes(tmp_path):
    config, model, batch = _setup(tmp_path)
    inputs = _inputs(config, batch)
    family = family_of(model)
    assert isinstance(model, VAEGAN) and not family.has_likelihood
    out = model(inputs.x)
    assert out.real.logits.shape == (6,) and out.recon.features.shape == (6, 4 * 14 * 14)  # block 1: 4 × 14 × 14
    terms = family.terms(model, inputs, config=config, generator=torch.Generator().manual_seed(0))
    assert set(family.reported) <= set(terms) and all(torch.isfinite(t) and t.dim() == 0 for t in terms.values())
    assert 0 <= terms["disc_acc_real"] <= 1 and 0 <= terms["disc_acc_fake"] <= 1
    with torch.no_grad():
        z = family.encode(model, inputs.x)
        assert z.shape == (6, config.model.latent_dim)
        recon = family.reconstruct(model, inputs.x)
        assert recon.shape == (6, 1, 28, 28) and 0 <= recon.min() and recon.max() <= 1
        a = family.sample(model, 3, generator=torch.Generator().manual_seed(5))
        b = family.sample(model, 3, generator=torch.Generator().manual_seed(5))
        assert a.shape == (3, 1, 28, 28) and torch.equal(a, b)


def test_the_conditional_variant_decodes_the_labels_it_is_given(tmp_path):
    config, model, _ = _setup(tmp_path, "model.conditional=true")
    family = family_of(model)
    z = torch.zeros(2, config.model.latent_dim)
    with torch.no_grad():
        by_class = family.decode(model, z, torch.tensor([0, 9]))
        assert not torch.allclose(by_class[0], by_class[1])
        assert family.sample(model, 4, labels=torch.tensor([1, 2, 3, 4])).shape == (4, 1, 28, 28)
    with pytest.raises(ValueError, match="pass class labels"):
        family.sample(model, 2)


@pytest.mark.parametrize(("override", "message"), [
    ("model.vaegan.feature_layer=4", r"model.vaegan.feature_layer must be between 1 and model.vaegan.layers \(2\), got 4"),
    ("model.vaegan.gamma=-1", r"model.vaegan.gamma and model.vaegan.pixel_weight must be ≥ 0"),
    ("model.vaegan.discriminator_lr=0", r"model.vaegan.discriminator_lr must be > 0 or null"),
    ("model.vaegan.depth=2", r"unknown key model.vaegan.depth in model.vaegan; allowed keys: gamma, width"),
    ("model.family=vae", r"model.vaegan is read by model.family vaegan only"),
])
def test_bad_vaegan_settings_are_one_config_error(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(tmp_path, *SMALL, override)


def test_a_discriminator_too_deep_for_the_image_is_a_config_error(tmp_path):
    config = tiny_config(tmp_path, *SMALL, "model.vaegan.layers=5", "model.vaegan.feature_layer=5")
    with pytest.raises(ConfigError, match=r"model.vaegan.layers: 5 halvings leave nothing of a 28x28 image"):
        build_model(config.model, SPEC)


def test_val_fd_without_the_classifier_stage_is_one_config_error(project):
    config = tiny_config(project, *SMALL, "model.vaegan.fd_every_epochs=1")
    with pytest.raises(ConfigError, match=r"model.vaegan.fd_every_epochs needs the in-domain classifier: .*"
                                          r"run the classifier stage first"):
        stages.train(config, stages.Paths.for_modality("image", project), progress=False)


@pytest.mark.slow
def test_vaegan_trains_with_two_ray_workers_into_mlflow_and_serves(project, ray_cluster):
    """Two DDP workers on the tiny Fashion-MNIST subset, 2 epochs, then sample and evaluate (no NLL).
    Measured 55–61 s on 2 cores shared with other jobs: ``-m slow``."""
    config = tiny_config(project, *SMALL, "train.epochs=2", "model.vaegan.fd_every_epochs=2", "model.vaegan.fd_samples=64")
    paths = stages.Paths.for_modality("image", project)
    stages.classifier(config, paths)  # the in-domain features of val_fd (training) and of evaluate's FD
    metrics = stages.train(config, paths, progress=False)
    assert {"best_val_recon", "final_val_disc_acc_real", "final_val_disc_acc_fake"} <= set(metrics)
    # val_fd at the epochs it is due (every 2nd), the same value in MLflow, history.csv and train.json.
    run_id = json.loads((paths.model / "run.json").read_text())["mlflow_run_id"]
    fd = tracking.client(config.tracking).get_metric_history(run_id, "val_fd")
    assert [m.step for m in fd] == [2] and fd[0].value > 0 and metrics["last_val_fd"] == pytest.approx(fd[0].value)
    with open(project / "plots/image/history.csv") as f:
        assert [row["val_fd"] for row in csv.DictReader(f)][0] == ""  # epoch 1: not measured

    run = json.loads((paths.model / "run.json").read_text())
    client = tracking.client(config.tracking)
    logged = client.get_run(run["mlflow_run_id"]).data.metrics
    for key in ("loss_encoder", "loss_decoder", "loss_discriminator", "recon", "feature_recon", "gan_decoder",
                "gan_discriminator", "disc_acc_real", "disc_acc_fake"):
        for split in ("train", "val"):
            history = client.get_metric_history(run["mlflow_run_id"], f"{split}_{key}")
            assert sorted(m.step for m in history) == [1, 2], f"{split}_{key}"
            assert all(math.isfinite(m.value) for m in history)
    assert 0 <= logged["val_disc_acc_real"] <= 1 and 0 <= logged["val_disc_acc_fake"] <= 1
    first, last = (client.get_metric_history(run["mlflow_run_id"], "val_recon")[i].value for i in (0, -1))
    assert last < first  # the pixel reconstruction improved

    served = mlflow.pyfunc.load_model(f"models:/{config.tracking.registered_model}@{config.tracking.alias}")
    x = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
    assert served.predict(x).shape == (3, config.model.latent_dim)
    recon = served.predict(x, params={"mode": "reconstruct"})
    assert recon.shape == (3, 1, 28, 28) and 0 <= recon.min() and recon.max() <= 1
    samples = served.predict(x, params={"mode": "sample", "n": 4, "seed": 1})
    assert samples.shape == (4, 1, 28, 28) and np.isfinite(samples).all()

    assert stages.sample(config, paths)["n_samples"] == config.sample.n
    ev = stages.evaluate(config, paths, progress=False)
    assert {"fd", "precision", "recall", "fd_train_vs_test", "fd_blurred_test"} <= set(ev)
    assert "test_nll_iwae" not in ev and {"test_recon", "test_disc_acc_real", "test_disc_acc_fake"} <= set(ev)
    assert registry.FAMILIES.get_or_raise("vaegan", "model.family").score == "recon"


@pytest.mark.slow
def test_a_killed_worker_resumes_the_vaegan_exactly(tmp_path, tiny_data, ray_cluster):
    """A worker killed after the first mid-epoch checkpoint: the group restarts, the three optimizers'
    states come back, and the run ends where an uninterrupted one does. Measured 177 s on 2 cores shared
    with other jobs (load average 17–29; about 55 s of it the worker group's restart): ``-m slow``."""
    from tests.test_fault_tolerance import _kill_a_worker_after_first_checkpoint
    from vaeflow.training.ray import fit

    processed = tiny_data / "data/processed/image"
    config = tiny_config(tmp_path, *SMALL, "train.epochs=2", "train.max_failures=2", "train.checkpoint_every_steps=4")
    killed: list[int] = []
    errors: list[str] = []
    killer = threading.Thread(target=_kill_a_worker_after_first_checkpoint,
                              args=(tmp_path / "ray_results/killed", killed, errors))
    killer.start()
    result = fit(config, processed, run_name="killed", run_id=tracking.start_run(config, {}, run_name="killed"),
                 progress=False)
    killer.join()
    assert killed, f"no training worker was found to kill; state API errors: {errors[-3:]}"
    assert [row["epoch"] for row in result.history] == [1, 2]

    ref = fit(config, processed, run_name="uninterrupted", progress=False,
              run_id=tracking.start_run(config, {}, run_name="uninterrupted"))
    for key in ("val_recon", "val_loss_discriminator", "val_disc_acc_fake"):
        assert result.history[-1][key] == pytest.approx(ref.history[-1][key], rel=1e-4, abs=1e-6), key
