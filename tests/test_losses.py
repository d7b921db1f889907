"""ELBO, KL, free bits, warm-up and the IWAE bound."""

from __future__ import annotations

import math

import pytest
import torch
from sklearn.datasets import load_digits

from vaeflow.config import ModelConfig, ModuleSpec
from vaeflow.losses import beta_at, elbo, iwae_log_likelihood
from vaeflow.models.distributions import DiagonalGaussian, standard_normal_log_prob
from vaeflow.models.vae import build_model


def test_kl_of_identical_gaussians_is_zero():
    q = DiagonalGaussian(torch.zeros(4, 3), torch.zeros(4, 3))
    assert torch.equal(q.kl_standard_normal(), torch.zeros(4, 3))


def test_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    ours = DiagonalGaussian(mu, logvar).kl_standard_normal()
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu, (0.5 * logvar).exp()), torch.distributions.Normal(0.0, 1.0)
    )
    assert torch.allclose(ours, ref, atol=1e-5)


def test_log_probs_match_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu, logvar, z = (torch.randn(5, 4, generator=g) for _ in range(3))
    ref = torch.distributions.Normal(mu, (0.5 * logvar).exp()).log_prob(z).sum(-1)
    assert torch.allclose(DiagonalGaussian(mu, logvar).log_prob(z), ref, atol=1e-5)
    assert torch.allclose(standard_normal_log_prob(z), torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1), atol=1e-5)


def test_elbo_terms_beta_and_free_bits():
    log_px = torch.tensor([-10.0, -20.0])
    kl = torch.tensor([[0.1, 2.0], [0.3, 4.0]])  # per-dimension batch means: 0.2, 3.0
    plain = elbo(log_px, kl)
    assert plain.recon.item() == pytest.approx(15.0) and plain.kl.item() == pytest.approx(3.2)
    assert plain.loss.item() == pytest.approx(18.2) and plain.neg_elbo.item() == pytest.approx(18.2)
    assert elbo(log_px, kl, beta=0.5).loss.item() == pytest.approx(15.0 + 1.6)
    fb = elbo(log_px, kl, free_bits=1.0)  # dimension 0 counts as 1.0 nat, dimension 1 stays 3.0
    assert fb.loss.item() == pytest.approx(15.0 + 4.0) and fb.neg_elbo.item() == pytest.approx(18.2)
    # Below the free-bits floor, the KL of that dimension receives no gradient.
    kl_req = kl.clone().requires_grad_()
    elbo(log_px, kl_req, free_bits=1.0).loss.backward()
    assert kl_req.grad[:, 0].abs().sum() == 0 and kl_req.grad[:, 1].abs().sum() > 0


def test_warmup_is_linear_then_flat():
    assert beta_at(0, beta=2.0, warmup_epochs=4) == 0.0
    assert beta_at(1, beta=2.0, warmup_epochs=4) == 0.5
    assert beta_at(9, beta=2.0, warmup_epochs=4) == 2.0
    assert beta_at(0, beta=2.0, warmup_epochs=0) == 2.0


@pytest.fixture(scope="module")
def trained_toy():
    """A small VAE trained for a few seconds on sklearn's 8×8 digits, binarised."""
    x = torch.tensor(load_digits().data, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    x = torch.bernoulli(x, generator=torch.Generator().manual_seed(0))
    spec = {"channels": 1, "height": 8, "width": 8}
    torch.manual_seed(0)
    model = build_model(ModelConfig(latent_dim=4, encoder=ModuleSpec("conv2d", {"channels": [16], "hidden": 64}),
                                    decoder=ModuleSpec("conv2d", {"channels": [16], "hidden": 64})), spec)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    for step in range(300):
        batch = x[torch.randint(0, len(x), (128,), generator=g)]
        out = model(batch, target=batch, generator=g)
        loss = elbo(model.decoder.log_prob(out.decoded, batch), out.posterior.kl_standard_normal()).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model, x[:200]


def _log_weights(model, x, k, seed):
    with torch.no_grad():
        q = model.encode(x)
        z = q.rsample(torch.Generator().manual_seed(seed), k=k)
        return model.decoder.log_prob(model.decode(z), x), standard_normal_log_prob(z), q.log_prob(z)


def test_iwae_k1_is_the_elbo_estimate_and_larger_k_is_tighter(trained_toy):
    model, x = trained_toy
    # k = 1: exactly the single-sample ELBO estimate, sample by sample.
    lpx, lpz, lqz = _log_weights(model, x, 1, seed=0)
    assert torch.allclose(iwae_log_likelihood(lpx, lpz, lqz), (lpx + lpz - lqz)[0])
    # In expectation the k = 1 bound equals the analytic-KL ELBO.
    lpx, lpz, lqz = _log_weights(model, x, 2000, seed=1)
    mc_elbo = (lpx + lpz - lqz).mean()
    q = model.encode(x)
    analytic = (lpx.mean(0) - q.kl_standard_normal().sum(-1)).mean()
    assert mc_elbo.item() == pytest.approx(analytic.item(), abs=0.1)
    # Larger k: a tighter (higher) bound on log p(x), increasing with k.
    bounds = [iwae_log_likelihood(*_log_weights(model, x, k, seed=2)).mean().item() for k in (1, 10, 100)]
    assert bounds[0] < bounds[1] < bounds[2]
    assert bounds[2] - bounds[0] > 0.1


def test_iwae_of_an_exact_posterior_is_exact():
    # If q = p(z|x) then every weight equals p(x): the bound is log p(x) for any k.
    log_px_z, log_pz = torch.full((5, 3), -2.0), torch.full((5, 3), -1.0)
    log_qz = torch.full((5, 3), -0.5)
    assert torch.allclose(iwae_log_likelihood(log_px_z, log_pz, log_qz), torch.full((3,), -2.5))
    assert math.isclose(iwae_log_likelihood(log_px_z[:1], log_pz[:1], log_qz[:1])[0].item(), -2.5)
