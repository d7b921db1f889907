"""The VQ-VAE family: quantiser, codebook updates, PixelCNN prior and the two training phases on tiny
tensors (default suite); training through Ray Train, MLflow and the pyfunc, codebooks under DDP and
resume after a killed worker with ``-m slow``."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from vaeflow import registry
from vaeflow.config import ConfigError
from vaeflow.modalities.base import ModelInputs
from vaeflow.models.families import build_model, family_of
from vaeflow.models.families.vqvae import VectorQuantizer, perplexity
from vaeflow.models.priors import PixelCNNPrior
from vaeflow.training.loop import run_epoch
from tests.conftest import ROOT, tiny_config

PRESET = ROOT / "configs/image/vqvae-tiny.yaml"
SPEC = {"channels": 1, "height": 28, "width": 28, "num_classes": 10}


def _config(tmp_path, *overrides):
    return tiny_config(tmp_path, *overrides, preset=PRESET)


def _model(tmp_path, *overrides, seed=0):
    torch.manual_seed(seed)
    config = _config(tmp_path, *overrides)
    return build_model(config.model, SPEC), config


def _inputs(n=8, seed=0, labels=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.bernoulli(torch.full((n, 1, 28, 28), 0.3), generator=g)
    return ModelInputs(x=x, target=x, labels=torch.arange(n) % 10 if labels else None)


# --- quantiser --------------------------------------------------------------------------------------


def test_straight_through_passes_the_decoders_gradient_to_the_encoder_output(tmp_path):
    model, config = _model(tmp_path)
    inputs = _inputs()
    out = model(inputs.x)
    recon = -model.decoder.log_prob(out.decoded, inputs.target).sum()
    (through_ste,) = torch.autograd.grad(recon, out.z_e)
    # The decoder saw z_q's value; its gradient at z_q is what reached z_e.
    z_q = out.quantized.z_q.detach().requires_grad_()
    decoded = model.decoder(z_q)
    torch.testing.assert_close(decoded.params, out.decoded.params)  # z_e + (z_q − z_e): z_q up to rounding
    (at_z_q,) = torch.autograd.grad(-model.decoder.log_prob(decoded, inputs.target).sum(), z_q)
    torch.testing.assert_close(through_ste, at_z_q)
    assert through_ste.abs().sum() > 0


def test_codebook_and_commitment_terms_match_a_hand_computation(tmp_path):
    model, config = _model(tmp_path)
    family = family_of(model)
    inputs = _inputs(n=2)
    terms = family.terms(model, inputs, config=config, generator=None)
    z_e = model.encoder(inputs.x).detach()  # (2, D, 7, 7)
    codebook = model.quantizer.codebook.detach()
    per_image = [sum(min(float(((z_e[n, :, i, j] - e) ** 2).sum()) for e in codebook)
                     for i in range(7) for j in range(7)) for n in range(2)]
    assert terms["commitment"].item() == pytest.approx(np.mean(per_image), rel=1e-5)
    assert terms["codebook"].item() == pytest.approx(np.mean(per_image), rel=1e-5)
    # The codebook term trains the codes, the commitment term the encoder.
    enc = list(model.encoder.parameters())
    g_cb = torch.autograd.grad(terms["codebook"], [model.quantizer.codebook, *enc], retain_graph=True, allow_unused=True)
    g_cm = torch.autograd.grad(terms["commitment"], [model.quantizer.codebook, *enc], allow_unused=True)
    assert g_cb[0].abs().sum() > 0 and all(g is None for g in g_cb[1:])
    assert g_cm[0] is None and all(g.abs().sum() > 0 for g in g_cm[1:])
    # β weights the commitment term in the VQ-VAE's loss.
    assert family.objective(config, 0.0).weights["vqvae"] == {"recon": 1.0, "codebook": 1.0, "commitment": 0.25}


def _grid(vectors):
    """Vectors (M, D) as a (1, D, 1, M) grid."""
    return torch.tensor(vectors, dtype=torch.float32).T[None, :, None, :]


def test_ema_update_matches_a_hand_computation():
    vq = VectorQuantizer(num_codes=2, code_dim=2, ema=True, decay=0.9)
    with torch.no_grad():
        vq.codebook.copy_(torch.tensor([[0.0, 0.0], [10.0, 10.0]]))
        vq.ema_sum.copy_(vq.codebook)
    vq.train()
    q = vq(_grid([[1.0, 0.0], [0.0, 3.0], [9.0, 9.0]]))
    assert q.codes.flatten().tolist() == [0, 0, 1]
    vq.update()
    # count 0.9·1 + 0.1·2 = 1.1, sum 0.9·(0, 0) + 0.1·(1, 3); count 0.9 + 0.1 = 1, sum 0.9·(10, 10) + 0.1·(9, 9)
    torch.testing.assert_close(vq.ema_count, torch.tensor([1.1, 1.0]))
    torch.testing.assert_close(vq.codebook, torch.tensor([[0.1 / 1.1, 0.3 / 1.1], [9.9, 9.9]]))
    vq.eval()
    vq(_grid([[5.0, 5.0]]))
    vq.update()  # nothing recorded in eval mode: no change
    torch.testing.assert_close(vq.codebook, torch.tensor([[0.1 / 1.1, 0.3 / 1.1], [9.9, 9.9]]))


@pytest.mark.parametrize("ema", [False, True])
def test_a_code_idle_for_restart_after_steps_moves_to_the_worst_fitted_encoder_output(ema):
    vq = VectorQuantizer(num_codes=3, code_dim=2, ema=ema, restart_after_steps=2)
    with torch.no_grad():
        vq.codebook.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [100.0, 100.0]]))
        if ema:
            vq.ema_sum.copy_(vq.codebook)
    vq.train()
    batch = _grid([[0.0, 0.1], [1.0, 0.9], [3.0, 3.0]])  # code 2 is never picked; (3, 3) fits worst
    vq(batch)
    vq.update()
    assert vq.idle_steps.tolist() == [0, 0, 1] and vq.codebook[2].tolist() == [100.0, 100.0]
    vq(batch)
    vq.update()
    assert vq.codebook[2].tolist() == [3.0, 3.0] and vq.idle_steps.tolist() == [0, 0, 0]
    if ema:
        assert vq.ema_count[2].item() == 1.0 and vq.ema_sum[2].tolist() == [3.0, 3.0]


def test_perplexity_and_usage_of_known_assignments(tmp_path):
    assert perplexity(torch.tensor([0, 0, 1, 1]), 4).item() == pytest.approx(2.0)
    assert perplexity(torch.tensor([3, 3, 3]), 4).item() == pytest.approx(1.0)
    assert perplexity(torch.arange(8), 8).item() == pytest.approx(8.0)
    model, config = _model(tmp_path)
    with torch.no_grad():  # every grid position on code 5
        model.quantizer.codebook.fill_(1e3)
        model.quantizer.codebook[5] = 0.0
    terms = family_of(model).terms(model, _inputs(), config=config, generator=None)
    assert terms["usage"].item() == pytest.approx(1 / 32) and terms["perplexity"].item() == pytest.approx(1.0)


# --- prior ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_classes", [0, 3])
def test_the_prior_is_causal_in_raster_order(num_classes):
    torch.manual_seed(0)
    prior = PixelCNNPrior(num_codes=6, channels=8, layers=2, num_classes=num_classes)
    labels = torch.tensor([1, 2]) if num_classes else None
    codes = torch.randint(0, 6, (2, 5, 5))
    logits = prior(codes, labels).flatten(2)  # (2, K, 25)
    for i in (0, 7, 12, 24):
        changed = codes.flatten(1).clone()
        changed[:, i:] = (changed[:, i:] + 1) % 6  # every input at positions ≥ i
        other = prior(changed.view(2, 5, 5), labels).flatten(2)
        torch.testing.assert_close(other[..., : i + 1], logits[..., : i + 1])  # outputs ≤ i unchanged
        if i < 24:
            assert not torch.allclose(other[..., i + 1 :], logits[..., i + 1 :])  # later ones do see it


def test_the_class_conditional_prior_needs_labels_and_samples_with_temperature(tmp_path):
    model, config = _model(tmp_path, "model.conditional=true")
    family = family_of(model)
    with pytest.raises(ValueError, match="class-conditional: pass class labels"):
        family.sample(model, 2)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    labels = torch.tensor([0, 1, 2, 3])
    images = family.sample(model, 4, labels=labels, generator=g())
    assert images.shape == (4, 1, 28, 28) and 0 <= images.min() and images.max() <= 1
    codes = model.prior.sample(4, model.grid, labels=labels, generator=g())
    cold = model.prior.sample(4, model.grid, labels=labels, temperature=1e-7, generator=g())
    assert not torch.equal(codes, cold)
    # Near 0 the draw is the argmax given the codes before it.
    logits = model.prior(cold, labels)
    assert torch.equal(cold, logits.argmax(1))


# --- phases, config ---------------------------------------------------------------------------------


@pytest.mark.parametrize("epoch, trained, frozen", [(0, "vqvae", "prior"), (1, "prior", "vqvae")])
def test_each_phase_steps_one_part_and_leaves_the_other_exactly_as_it_was(tmp_path, epoch, trained, frozen):
    """Zero weights still back-propagate (zeros, as DDP needs) but never step: no Adam momentum."""
    model, config = _model(tmp_path, "model.vq.ema=true")
    family = family_of(model)
    modality = registry.MODALITIES["image"].data
    optimizers = family.optimizers(model, config.train)
    prior = {k for k in model.state_dict() if k.startswith("prior.")}
    parts = {"prior": prior, "vqvae": set(model.state_dict()) - prior}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    loader = [(torch.randint(0, 256, (16, 1, 28, 28), generator=g, dtype=torch.uint8), torch.arange(16) % 10)
              for _ in range(3)]
    run_epoch(model, loader, modality, config, epoch=epoch, device=torch.device("cpu"), generator=g,
              optimizer=optimizers)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in parts[frozen])
    assert any(not torch.equal(before[k], after[k]) for k in parts[trained])
    idle = next(o for o in optimizers if o.name == frozen)
    assert not idle.optimizer.state  # never stepped


def test_bad_vq_settings_are_one_line_config_errors(tmp_path):
    for override, message in [
        ("model.vq.prior_start_epoch=2", r"model.vq.prior_start_epoch \(2\) must be < train.epochs \(2\)"),
        ("model.vq.decay=1.5", r"model.vq.decay must be in \(0, 1\)"),
        ("model.vq.codebook_size=1", r"model.vq.codebook_size must be ≥ 2"),
        ("model.vq.nope=1", r"unknown key model.vq.nope in model.vq; allowed keys: codebook_size"),
    ]:
        with pytest.raises(ConfigError, match=message) as info:
            _config(tmp_path, override)
        assert "\n" not in str(info.value)
    config = _config(tmp_path, "model.encoder.hidden=32")
    with pytest.raises(ValueError, match="model.encoder.hidden: the VQ-VAE has no fully connected layer"):
        build_model(config.model, SPEC)


# --- through Ray Train, MLflow and the pyfunc (slow) -----------------------------------------------


# Measured 46–67 s on 2 shared cores (two epochs on 2 workers, then sample and evaluate), plus ~20 s of
# data and Ray set-up shared with the session.
@pytest.mark.slow
def test_vqvae_trains_both_phases_through_ray_mlflow_and_serves_codes_and_samples(project, ray_cluster):
    import mlflow

    from vaeflow import stages, tracking

    config = _config(project, "model.vq.ema=true", "model.conditional=true")
    paths = stages.Paths.for_modality("image", project)
    metrics = stages.train(config, paths, progress=False)
    assert {"best_val_neg_elbo", "final_val_prior_bits_per_dim", "final_val_usage", "final_val_perplexity"} <= set(metrics)
    history = list(_csv_rows(paths.plots / "history.csv"))
    assert [float(r["prior_phase"]) for r in history] == [0.0, 1.0]
    first, second = history
    for key in ("loss_vqvae", "loss_prior", "recon", "commitment", "prior_nll", "usage", "perplexity"):
        assert f"train_{key}" in first and f"val_{key}" in first
    assert float(second["val_prior_nll"]) < float(first["val_prior_nll"])  # the prior trained in epoch 2
    assert float(second["val_recon"]) == pytest.approx(float(first["val_recon"]), rel=1e-6)  # the VQ-VAE did not
    assert float(first["train_loss_prior"]) == 0.0 and float(second["train_loss_vqvae"]) == 0.0
    assert 0 < float(first["val_usage"]) <= 1 and 1 <= float(first["val_perplexity"]) <= 32

    run = json.loads((paths.model / "run.json").read_text())
    client = tracking.client(config.tracking)
    assert sorted(m.step for m in client.get_metric_history(run["mlflow_run_id"], "val_perplexity")) == [1, 2]

    # The frozen VQ-VAE: epoch 2's checkpoint holds epoch 1's encoder, decoder and codebook.
    from vaeflow.training import checkpoint

    (run_dir,) = (project / "ray_results").iterdir()
    states = [checkpoint.load(d) for d in run_dir.glob("checkpoint_*") if d.is_dir()]
    by_epoch = {s["epoch"]: s["model"] for s in states}
    assert all(torch.equal(by_epoch[1][k], by_epoch[2][k]) for k in by_epoch[1] if not k.startswith("prior."))
    assert any(not torch.equal(by_epoch[1][k], by_epoch[2][k]) for k in by_epoch[1] if k.startswith("prior."))

    served = mlflow.pyfunc.load_model(f"models:/{config.tracking.registered_model}@{config.tracking.alias}")
    model, _, _ = checkpoint.load_model(paths.model / "model.pt")
    family = family_of(model)
    x = (torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    z = served.predict(x.numpy())
    assert z.shape == (3, model.latent_dim) == (3, 8 * 7 * 7)
    with torch.no_grad():
        codes = family.codes(model, x)  # (3, 49) indices; encode gives their vectors
        np.testing.assert_allclose(z, model.quantizer.codebook[codes].transpose(1, 2).flatten(1).numpy(), rtol=1e-6)
    assert served.predict(x.numpy(), params={"mode": "reconstruct"}).shape == (3, 1, 28, 28)
    samples = served.predict(x.numpy(), params={"mode": "sample", "n": 4, "seed": 1, "label": 3})
    cold = served.predict(x.numpy(), params={"mode": "sample", "n": 4, "seed": 1, "label": 3, "temperature": 0.05})
    assert samples.shape == cold.shape == (4, 1, 28, 28) and not np.allclose(samples, cold)

    assert stages.sample(config, paths)["n_samples"] == config.sample.n
    stages.classifier(config, paths)  # the in-domain features evaluate's FD and precision/recall use
    ev = stages.evaluate(config, paths, progress=False)
    assert {"fd", "precision", "recall", "fd_train_vs_test", "fd_blurred_test"} <= set(ev)
    assert {"test_neg_elbo", "test_prior_nll", "test_prior_bits_per_dim", "test_nll_iwae", "test_usage"} <= set(ev)
    # The bound from log_likelihood is recon + prior NLL on the same (fixed) examples.
    assert ev["test_nll_iwae"] == pytest.approx(ev["iwae_subset_neg_elbo"], rel=1e-4)
    assert ev["test_prior_bits_per_dim"] == pytest.approx(ev["test_prior_nll"] / (784 * np.log(2)), rel=1e-6)
    saved = json.loads((paths.metrics / "evaluate.json").read_text())
    assert saved["test_prior_bits_per_dim"] == ev["test_prior_bits_per_dim"]


def _csv_rows(path):
    import csv

    with open(path, newline="") as f:
        yield from csv.DictReader(f)


def _batches(rank: int) -> list[torch.Tensor]:
    """Rank ``rank``'s own data: 5 batches of 2 grids of 3×3 vectors (D = 4)."""
    g = torch.Generator().manual_seed(100 + rank)
    return [torch.randn(2, 4, 3, 3, generator=g) + rank for _ in range(5)]


def _codebook_after(batches: list[torch.Tensor], restart_after_steps: int) -> VectorQuantizer:
    torch.manual_seed(0)  # the same initial codebook everywhere
    vq = VectorQuantizer(num_codes=16, code_dim=4, ema=True, decay=0.8, restart_after_steps=restart_after_steps)
    vq.train()
    for batch in batches:
        vq(batch)
        vq.update()
    return vq


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    """One of two gloo workers: EMA updates on this rank's own batches, without and with restarts."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    for restart_after_steps in (0, 2):
        vq = _codebook_after(_batches(rank), restart_after_steps)
        torch.save({"codebook": vq.codebook.detach(), "count": vq.ema_count},
                   Path(out_dir) / f"restart{restart_after_steps}-rank{rank}.pt")
    dist.destroy_process_group()


# Measured 11 s (one setting) to 48 s (two settings, a loaded machine): two spawned processes, each
# importing torch and this module.
@pytest.mark.slow
def test_ema_codebooks_and_restarts_stay_identical_across_ddp_workers(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    results = {}
    for restart_after_steps in (0, 2):
        r0, r1 = (torch.load(tmp_path / f"restart{restart_after_steps}-rank{r}.pt") for r in (0, 1))
        assert torch.equal(r0["codebook"], r1["codebook"]) and torch.equal(r0["count"], r1["count"])
        results[restart_after_steps] = r0
    # Without restarts, two workers reach the codebook one process reaches on both workers' batches.
    union = _codebook_after([torch.cat(pair) for pair in zip(_batches(0), _batches(1))], 0)
    torch.testing.assert_close(results[0]["codebook"], union.codebook.detach())
    torch.testing.assert_close(results[0]["count"], union.ema_count)
    # Restarts happened (rank 0's choice, broadcast: else the ranks would differ above).
    assert not torch.equal(results[0]["codebook"], results[2]["codebook"])


# Measured 166 s on a heavily loaded machine (two fits of two epochs and a worker group restart;
# test_fault_tolerance's equivalent takes about 60 s unloaded).
@pytest.mark.slow
def test_a_killed_worker_resumes_the_vqvae_exactly(tmp_path, tiny_data, ray_cluster):
    from tests.test_fault_tolerance import _kill_a_worker_after_first_checkpoint
    from vaeflow import tracking
    from vaeflow.training.ray import fit

    processed = tiny_data / "data/processed/image"
    config = _config(tmp_path, "model.vq.ema=true", "train.max_failures=2", "train.checkpoint_every_steps=4")
    run_id = tracking.start_run(config, {}, run_name="killed")
    killed, errors = [], []
    killer = threading.Thread(target=_kill_a_worker_after_first_checkpoint,
                              args=(tmp_path / "ray_results/killed", killed, errors))
    killer.start()
    result = fit(config, processed, run_name="killed", run_id=run_id, progress=False)
    killer.join()
    assert killed, f"no training worker was found to kill; state API errors: {errors[-3:]}"
    ref = fit(config, processed, run_name="uninterrupted", run_id=tracking.start_run(config, {}, run_name="ref"),
              progress=False)
    for key in ("val_neg_elbo", "val_recon", "val_prior_nll", "val_perplexity"):
        assert result.history[-1][key] == pytest.approx(ref.history[-1][key], rel=1e-5)
