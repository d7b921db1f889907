"""Dilated 1-D convolutional encoder for windows of a multichannel series."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vaeflow.models.outputs import EncoderOutput
from vaeflow.registry import ENCODERS


@ENCODERS.register("conv1d")
class Conv1dEncoder(nn.Module):
    """Conv1d blocks with dilation 1, 2, 4, … (length-preserving, as in WaveNet/TCN), then a linear head.

    Args:
        input_spec: the data's spec (``channels``, ``length``).
        latent_dim: size of z.
        cond_dim: size of the condition vector appended before the head; 0 for none.
        channels: output channels of each block; block i has dilation 2^i.
        kernel_size: odd kernel size of every block.

    Shapes:
        x: (N, T, C); cond: (N, cond_dim) → mu, logvar: (N, latent_dim)
    """

    # The modalities whose batches this module reads; config validation rejects it for any other.
    modalities = ("timeseries",)

    def __init__(self, *, input_spec: dict[str, Any], latent_dim: int, cond_dim: int = 0,
                 channels: list[int] = (32, 32, 32), kernel_size: int = 3):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd to keep the length, got {kernel_size}")
        c, t = input_spec["channels"], input_spec["length"]
        layers: list[nn.Module] = []
        for i, out_c in enumerate(channels):
            d = 2**i
            layers += [nn.Conv1d(c, out_c, kernel_size, dilation=d, padding=d * (kernel_size - 1) // 2), nn.SiLU()]
            c = out_c
        self.features = nn.Sequential(*layers, nn.Flatten())  # (N, c, T) → (N, c*T)
        self.head = nn.Linear(c * t + cond_dim, 2 * latent_dim)
        self.cond_dim = cond_dim
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv1d, nn.Linear)):
                m.reset_parameters()
        nn.init.zeros_(self.head.bias)
        self.head.weight.data.mul_(0.1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> EncoderOutput:
        h = self.features(x.transpose(1, 2))  # (N, T, C) → (N, C, T) → (N, c*T)
        if self.cond_dim:
            h = torch.cat([h, cond], dim=-1)
        mu, logvar = self.head(h).chunk(2, dim=-1)
        return EncoderOutput(mu=mu, logvar=logvar.clamp(-12.0, 8.0))
