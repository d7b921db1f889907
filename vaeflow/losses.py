"""Pure loss functions: the (β-)ELBO with free bits, KL warm-up and the IWAE bound."""

from __future__ import annotations

import dataclasses
import math

import torch


@dataclasses.dataclass
class ELBOTerms:
    """Batch means, in nats per example.

    Attributes:
        loss: what is minimised: recon + β · (KL with free bits).
        recon: −log p(x | z).
        kl: KL(q(z|x) || p(z)), without β or free bits.
        neg_elbo: recon + kl, the honest bound on −log p(x).
    """

    loss: torch.Tensor
    recon: torch.Tensor
    kl: torch.Tensor
    neg_elbo: torch.Tensor


def elbo(log_px_z: torch.Tensor, kl_per_dim: torch.Tensor, *, beta: float = 1.0, free_bits: float = 0.0) -> ELBOTerms:
    """β-ELBO (Higgins et al. 2017) with free bits per latent dimension (Kingma et al. 2016).

    Free bits: each dimension's batch-mean KL counts as at least ``free_bits`` nats, so the
    optimiser gains nothing by pushing it below that (against posterior collapse).

    Shapes:
        log_px_z: (N,); kl_per_dim: (N, D)
    """
    recon = -log_px_z.mean()
    kl_dims = kl_per_dim.mean(0)  # (N, D) → (D,)
    kl = kl_dims.sum()
    return ELBOTerms(loss=recon + beta * free_bits_kl(kl_dims, free_bits), recon=recon, kl=kl, neg_elbo=recon + kl)


def free_bits_kl(kl_dims: torch.Tensor, free_bits: float) -> torch.Tensor:
    """The KL that the optimiser sees under free bits (Kingma et al. 2016): each dimension's batch-mean
    KL counts as at least ``free_bits`` nats; with 0 it is the plain sum.

    Shapes:
        kl_dims: (D,) batch-mean KL per latent dimension → ()
    """
    return kl_dims.clamp(min=free_bits).sum() if free_bits > 0 else kl_dims.sum()


def beta_at(epoch: float, *, beta: float, warmup_epochs: int) -> float:
    """Linear KL warm-up (Bowman et al. 2016): 0 → ``beta`` over ``warmup_epochs`` (fractional epochs)."""
    if warmup_epochs <= 0:
        return beta
    return beta * min(1.0, epoch / warmup_epochs)


def iwae_log_likelihood(log_px_z: torch.Tensor, log_pz: torch.Tensor, log_qz: torch.Tensor) -> torch.Tensor:
    """IWAE bound log (1/k) Σ_k p(x, z_k) / q(z_k | x) (Burda et al. 2016, https://arxiv.org/abs/1509.00519).

    With k = 1 it is the ELBO estimate; it tightens towards log p(x) as k grows.

    Shapes:
        log_px_z, log_pz, log_qz: (k, N) → (N,)
    """
    k = log_px_z.shape[0]
    return torch.logsumexp(log_px_z + log_pz - log_qz, dim=0) - math.log(k)
