"""Gaussian likelihood shared by the sequence decoders: learned per-channel scale, NaN targets masked."""

from __future__ import annotations

import math

import torch
from torch import nn

from vaeflow.models.distributions import gaussian_log_density
from vaeflow.models.outputs import DecoderOutput


class SequenceGaussian(nn.Module):
    """Base class: p(x | z) = Π_t Π_c N(x_tc; μ_tc, σ_c²) with a learned log σ per channel.

    Subclasses compute the means in ``forward`` and wrap them with :meth:`output`. Target steps that
    are NaN (padding of shorter series) are left out of the likelihood.

    Args:
        channels: C.
        scale_init: initial σ. Scaled data live in about [0, 1] (or unit variance), and Adam moves
            log σ by about the learning rate per step, so σ = 1 would take thousands of steps to
            shrink to the noise level while the KL term pushes the posterior towards the prior.
    """

    likelihood = "gaussian"

    def __init__(self, channels: int, scale_init: float = 0.1):
        super().__init__()
        if scale_init <= 0:
            raise ValueError(f"scale_init must be > 0, got {scale_init}")
        self.scale_init = scale_init
        self.log_scale = nn.Parameter(torch.full((channels,), math.log(scale_init)))

    def reset_likelihood(self) -> None:
        nn.init.constant_(self.log_scale, math.log(self.scale_init))

    def output(self, means: torch.Tensor) -> DecoderOutput:
        """Shapes: means (N, T, C) → params (N, T, C), scale (1, 1, C)."""
        # Bounded below so that a perfectly fitted channel cannot drive the density to infinity.
        return DecoderOutput(params=means, scale=self.log_scale.clamp(min=-7.0).view(1, 1, -1))

    def log_prob(self, output: DecoderOutput, target: torch.Tensor) -> torch.Tensor:
        """log p(target | z) summed over observed steps and channels.

        Shapes:
            output.params: (..., T, C); target: broadcastable to it, NaN where padded → (...)
        """
        mu, log_sigma = output.params, output.scale
        observed = torch.isfinite(target)
        safe = torch.where(observed, target, torch.zeros_like(target))
        lp = gaussian_log_density(safe, mu, log_sigma)
        return (lp * observed).flatten(-2).sum(-1)

    def mean(self, output: DecoderOutput) -> torch.Tensor:
        """Expected values in scaled units. Shapes: (N, T, C)."""
        return output.params

    def generate(self, output: DecoderOutput, generator: torch.Generator | None = None, *, mean: bool = True) -> torch.Tensor:
        """Sequences from decoder output: the mean (default) or a draw from the likelihood."""
        if mean:
            return output.params
        noise = torch.randn(output.params.shape, generator=generator, device=output.params.device, dtype=output.params.dtype)
        return output.params + output.scale.exp() * noise
