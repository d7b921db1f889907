"""Diagonal Gaussian posterior and the standard-normal prior."""

from __future__ import annotations

import math

import torch

_LOG_2PI = math.log(2 * math.pi)


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) summed over the last dimension.

    Shapes:
        z: (..., D) → (...)
    """
    return -0.5 * (z.pow(2) + _LOG_2PI).sum(-1)


class DiagonalGaussian:
    """N(mu, diag(exp(logvar))) over the last dimension.

    Args:
        mu: means.
        logvar: log variances, same shape as ``mu``.

    Shapes:
        mu, logvar: (N, D)
    """

    def __init__(self, mu: torch.Tensor, logvar: torch.Tensor):
        if mu.shape != logvar.shape:
            raise ValueError(f"mu {tuple(mu.shape)} and logvar {tuple(logvar.shape)} must have the same shape")
        self.mu = mu
        self.logvar = logvar

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    def rsample(self, generator: torch.Generator | None = None, k: int | None = None) -> torch.Tensor:
        """Reparameterised draw mu + std * eps (Kingma & Welling 2014, https://arxiv.org/abs/1312.6114).

        Shapes:
            k is None: (N, D); otherwise (k, N, D).
        """
        shape = self.mu.shape if k is None else (k, *self.mu.shape)
        eps = torch.randn(shape, generator=generator, device=self.mu.device, dtype=self.mu.dtype)
        return self.mu + self.std * eps

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log q(z) summed over D.

        Shapes:
            z: (..., N, D) → (..., N)
        """
        return -0.5 * (((z - self.mu) ** 2) * torch.exp(-self.logvar) + self.logvar + _LOG_2PI).sum(-1)

    def kl_standard_normal(self) -> torch.Tensor:
        """KL(q || N(0, I)) per dimension, in closed form.

        Shapes:
            (N, D)
        """
        return 0.5 * (self.mu.pow(2) + self.logvar.exp() - 1.0 - self.logvar)

    def mode(self) -> torch.Tensor:
        return self.mu
