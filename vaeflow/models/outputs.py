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
    """

    params: torch.Tensor
    scale: torch.Tensor | None = None

    def float(self) -> DecoderOutput:
        return DecoderOutput(self.params.float(), None if self.scale is None else self.scale.float())


@dataclasses.dataclass
class VAEOutput:
    """A forward pass: posterior parameters, the sampled z and the decoder's output."""

    posterior: Any  # DiagonalGaussian
    z: torch.Tensor
    decoded: DecoderOutput
