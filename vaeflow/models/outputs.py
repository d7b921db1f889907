"""Dataclass outputs shared by encoders, decoders and the VAE."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch


@dataclasses.dataclass
class EncoderOutput:
    """Posterior parameters. Shapes: mu, logvar: (N, D)."""

    mu: torch.Tensor
    logvar: torch.Tensor


@dataclasses.dataclass
class DecoderOutput:
    """Likelihood parameters, interpreted by the decoder that produced them.

    Attributes:
        params: the main parameter tensor (logits for Bernoulli, means for Gaussian).
        scale: log standard deviation for Gaussian likelihoods, else None.
        aux: predictions of side variables that the likelihood also scores (e.g. the molecule
            decoder's property head), else None.
    """

    params: torch.Tensor
    scale: torch.Tensor | None = None
    aux: torch.Tensor | None = None

    def float(self) -> DecoderOutput:
        f = lambda t: None if t is None else t.float()  # noqa: E731
        return DecoderOutput(self.params.float(), f(self.scale), f(self.aux))


@dataclasses.dataclass
class VAEOutput:
    """A forward pass: posterior parameters, the sampled z and the decoder's output."""

    posterior: Any  # DiagonalGaussian
    z: torch.Tensor
    decoded: DecoderOutput
