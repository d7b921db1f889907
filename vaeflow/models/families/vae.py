"""The Gaussian VAE family: β-VAE, KL warm-up, free bits, class/property-conditional, IWAE."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vaeflow import registry
from vaeflow.losses import beta_at, free_bits_kl, iwae_log_likelihood
from vaeflow.models.distributions import standard_normal_log_prob
from vaeflow.models.families.base import Family, Objective, unwrap
from vaeflow.models.vae import build_model


@registry.FAMILIES.register("vae")
class VAEFamily(Family):
    """VAE (Kingma & Welling 2014, https://arxiv.org/abs/1312.6114) with a diagonal Gaussian posterior
    and a standard-normal prior; the likelihood is the decoder's ``log_prob``.

    Terms (batch means, nats per example): ``recon`` = −log p(x | z), ``kl`` = KL(q(z|x) ‖ p(z)),
    ``kl_objective`` = the KL with free bits (Kingma et al. 2016; equal to ``kl`` when
    ``loss.free_bits`` is 0), ``neg_elbo`` = recon + kl. The one optimizer minimises
    recon + β · kl_objective, with β warmed up linearly (Bowman et al. 2016; β-VAE: Higgins et al. 2017).
    """

    # Validation −ELBO: unlike the training loss it does not move with β warm-up.
    score = "neg_elbo"
    reported = ("recon", "kl", "neg_elbo")
    summary = ("kl",)
    score_label = "−ELBO"

    def build(self, model_config: Any, input_spec: dict[str, Any]) -> nn.Module:
        return build_model(model_config, input_spec)

    def terms(self, model: nn.Module, inputs: Any, *, config: Any, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        bare = unwrap(model)
        out = model(inputs.x, inputs.labels if bare.conditional else None, target=inputs.target, generator=generator)
        # Likelihood and KL in fp32 whatever the forward precision.
        with torch.autocast(device_type=out.z.device.type, enabled=False):
            log_px_z = bare.decoder.log_prob(out.decoded.float(), inputs.target)  # (N,)
            kl_dims = out.posterior.kl_standard_normal().float().mean(0)  # (N, D) → (D,)
        recon = -log_px_z.mean()
        kl = kl_dims.sum()
        return {"recon": recon, "kl": kl, "kl_objective": free_bits_kl(kl_dims, config.loss.free_bits),
                "neg_elbo": recon + kl}

    def objective(self, config: Any, epoch: float | None) -> Objective:
        loss = config.loss
        beta = loss.beta if epoch is None else beta_at(epoch, beta=loss.beta, warmup_epochs=loss.warmup_epochs)
        return Objective(weights={"model": {"recon": 1.0, "kl_objective": beta}}, values={"beta": beta})

    @torch.no_grad()
    def sample(self, model: nn.Module, n: int, *, labels: torch.Tensor | None = None, temperature: float = 1.0,
               generator: torch.Generator | None = None, mean: bool = True) -> Any:
        return model.sample(n, generator=generator, labels=labels, temperature=temperature, mean=mean)

    def encode(self, model: nn.Module, x: Any, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Posterior means. Shapes: → (N, latent_dim)."""
        return model.encode(x, labels).mu

    def decode(self, model: nn.Module, z: torch.Tensor, labels: torch.Tensor | None = None, *, mean: bool = True,
               generator: torch.Generator | None = None) -> Any:
        """The decoder's mean (Bernoulli/Gaussian means; greedy tokens for sequence decoders), or a draw."""
        out = model.decode(z, labels)
        return model.decoder.mean(out) if mean else model.decoder.generate(out, generator, mean=False)

    @torch.no_grad()
    def log_likelihood(self, model: nn.Module, inputs: Any, *, k: int, generator: torch.Generator | None = None,
                       max_decode: int = 8192) -> torch.Tensor:
        """IWAE estimate of log p(x) with k importance samples (Burda et al. 2016,
        https://arxiv.org/abs/1509.00519), decoding at most ``max_decode`` samples at a time.

        Shapes:
            → (N,), in nats.
        """
        labels = inputs.labels if model.conditional else None
        q = model.encode(inputs.x, labels)
        n = q.mu.shape[0]
        chunk = max(1, max_decode // n)
        parts = []
        for start in range(0, k, chunk):
            z = q.rsample(generator, k=min(chunk, k - start))  # (kc, N, D)
            log_px_z = model.decoder.log_prob(model.decode(z, labels, inputs.target), inputs.target)  # (kc, N)
            parts.append((log_px_z, standard_normal_log_prob(z), q.log_prob(z)))
        log_px_z, log_pz, log_qz = (torch.cat(p) for p in zip(*parts))  # each (k, N)
        return iwae_log_likelihood(log_px_z, log_pz, log_qz)

    @torch.no_grad()
    def anomaly_scores(self, model: nn.Module, inputs: Any, *, k: int,
                       generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """``recon_prob``: −(1/k) Σ_k log p(x | z_k), z_k ~ q(z | x), the negative Monte-Carlo
        reconstruction probability (An & Cho 2015); ``neg_elbo``: recon_prob + KL(q(z | x) ‖ p(z)).

        Shapes:
            each → (N,), in nats.
        """
        labels = inputs.labels if model.conditional else None
        q = model.encode(inputs.x, labels)
        z = q.rsample(generator, k=k)  # (k, N, D)
        recon = -model.decoder.log_prob(model.decode(z, labels), inputs.target).mean(0)  # (k, N) → (N,)
        return {"recon_prob": recon, "neg_elbo": recon + q.kl_standard_normal().sum(-1)}
