"""Diagonal Gaussian posterior and the standard-normal prior."""

from __future__ import annotations

import math

import torch

LOG_2PI = math.log(2 * math.pi)


def gaussian_log_density(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Elementwise log N(x; mean, exp(log_scale)²): the one form every Gaussian term uses (posterior,
    prior, and the decoders' pixel, sequence and property likelihoods); callers sum or mask it.

    Shapes:
        x, mean, log_scale: broadcastable to each other → their broadcast shape
    """
    return -0.5 * (((x - mean) / log_scale.exp()) ** 2 + 2 * log_scale + LOG_2PI)


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) summed over the last dimension.

    Shapes:
        z: (..., D) → (...)
    """
    zero = z.new_zeros(())
    return gaussian_log_density(z, zero, zero).sum(-1)


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
        return gaussian_log_density(z, self.mu, 0.5 * self.logvar).sum(-1)

    def kl_standard_normal(self) -> torch.Tensor:
        """KL(q || N(0, I)) per dimension, in closed form.

        Shapes:
            (N, D)
        """
        return 0.5 * (self.mu.pow(2) + self.logvar.exp() - 1.0 - self.logvar)

    def mode(self) -> torch.Tensor:
        return self.mu
