"""Transposed-convolution image decoder with a Bernoulli or Gaussian pixel likelihood."""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from vaeflow.models.distributions import gaussian_log_density
from vaeflow.models.outputs import DecoderOutput
from vaeflow.registry import DECODERS


@DECODERS.register("conv2d")
class Conv2dDecoder(nn.Module):
    """z → linear → (channels[0], H/2^L, W/2^L) → L transposed-conv blocks that double H and W.

    Args:
        input_spec: the data's spec (``channels``, ``height``, ``width``).
        latent_dim: size of z.
        cond_dim: size of the condition vector concatenated to z; 0 for none.
        channels: channels entering each of the L upsampling blocks; the last block outputs the image.
        hidden: width of the fully connected layer after z.
        likelihood: ``bernoulli`` (logits; for binarised pixels) or ``gaussian`` (means with a
            learned per-channel scale, as in σ-VAE, Rybkin et al. 2021).

    Shapes:
        z: (N, latent_dim); cond: (N, cond_dim) → params: (N, C, H, W)
    """

    # The modalities whose batches this module reads; config validation rejects it for any other.
    modalities = ("image",)

    def __init__(
        self,
        *,
        input_spec: dict[str, Any],
        latent_dim: int,
        cond_dim: int = 0,
        channels: list[int] = (64, 32),
        hidden: int = 256,
        likelihood: Literal["bernoulli", "gaussian"] = "bernoulli",
    ):
        super().__init__()
        c, h, w = input_spec["channels"], input_spec["height"], input_spec["width"]
        stride = 2 ** len(channels)
        if h % stride or w % stride:
            raise ValueError(
                f"image size {h}x{w} is not divisible by 2^{len(channels)}; use fewer decoder channels"
            )
        self.start = (channels[0], h // stride, w // stride)
        self.likelihood = likelihood
        self.fc = nn.Sequential(
            nn.Linear(latent_dim + cond_dim, hidden),
            nn.SiLU(),
            nn.Linear(hidden, math.prod(self.start)),
            nn.SiLU(),
        )
        blocks: list[nn.Module] = []
        outs = [*channels[1:], c]
        for i, (cin, cout) in enumerate(zip(channels, outs)):
            blocks.append(nn.ConvTranspose2d(cin, cout, kernel_size=4, stride=2, padding=1))
            if i < len(channels) - 1:
                blocks.append(nn.SiLU())
        self.deconv = nn.Sequential(*blocks)
        # Per-channel log standard deviation of the Gaussian likelihood.
        self.log_scale = nn.Parameter(torch.zeros(c)) if likelihood == "gaussian" else None
        self.cond_dim = cond_dim
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.ConvTranspose2d, nn.Linear)):
                m.reset_parameters()
        if self.log_scale is not None:
            nn.init.zeros_(self.log_scale)

    def forward(self, z: torch.Tensor, cond: torch.Tensor | None = None, target: Any = None) -> DecoderOutput:
        if self.cond_dim:
            z = torch.cat([z, cond], dim=-1)
        h = self.fc(z).view(-1, *self.start)  # (N, c0*h0*w0) → (N, c0, h0, w0)
        params = self.deconv(h)
        if self.log_scale is None:
            return DecoderOutput(params=params)
        return DecoderOutput(params=torch.sigmoid(params), scale=self.log_scale.view(1, -1, 1, 1))

    def log_prob(self, output: DecoderOutput, target: torch.Tensor) -> torch.Tensor:
        """log p(target | z), summed over pixels.

        Shapes:
            output.params: (..., C, H, W); target: broadcastable to it → (...)
        """
        if self.likelihood == "bernoulli":
            logits = output.params
            lp = -F.binary_cross_entropy_with_logits(logits, target.expand_as(logits), reduction="none")
        else:
            lp = gaussian_log_density(target, output.params, output.scale)
        return lp.flatten(-3).sum(-1)

    def mean(self, output: DecoderOutput) -> torch.Tensor:
        """Expected pixel values in [0, 1]. Shapes: (N, C, H, W)."""
        return torch.sigmoid(output.params) if self.likelihood == "bernoulli" else output.params.clamp(0, 1)

    def generate(self, output: DecoderOutput, generator: torch.Generator | None = None, *, mean: bool = True) -> torch.Tensor:
        """Images from decoder output: the mean (default) or a draw from the likelihood."""
        m = self.mean(output)
        if mean:
            return m
        if self.likelihood == "bernoulli":
            return torch.bernoulli(m, generator=generator)
        noise = torch.randn(m.shape, generator=generator, device=m.device, dtype=m.dtype)
        return (m + output.scale.exp() * noise).clamp(0, 1)
