"""Dilated 1-D convolutional sequence decoder with a Gaussian likelihood."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vaeflow.models.decoders.sequence_gaussian import SequenceGaussian
from vaeflow.models.outputs import DecoderOutput
from vaeflow.registry import DECODERS


@DECODERS.register("conv1d")
class Conv1dDecoder(SequenceGaussian):
    """z → linear → (channels[0], T) → length-preserving dilated Conv1d blocks → 1×1 conv to C.

    Args:
        input_spec: the data's spec (``channels``, ``length``).
        latent_dim: size of z.
        cond_dim: size of the condition vector concatenated to z; 0 for none.
        scale_init: initial standard deviation of the Gaussian likelihood (learned per channel).
        channels: channels of each block; block i has dilation 2^i.
        kernel_size: odd kernel size.

    Shapes:
        z: (N, latent_dim); cond: (N, cond_dim) → params: (N, T, C)
    """

    # The modalities whose batches this module reads; config validation rejects it for any other.
    modalities = ("timeseries",)

    def __init__(self, *, input_spec: dict[str, Any], latent_dim: int, cond_dim: int = 0, scale_init: float = 0.1,
                 channels: list[int] = (32, 32, 32), kernel_size: int = 3):
        super().__init__(input_spec["channels"], scale_init)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd to keep the length, got {kernel_size}")
        self.length = input_spec["length"]
        self.start = channels[0]
        self.fc = nn.Sequential(nn.Linear(latent_dim + cond_dim, channels[0] * self.length), nn.SiLU())
        layers: list[nn.Module] = []
        c = channels[0]
        for i, out_c in enumerate(channels):
            d = 2**i
            layers += [nn.Conv1d(c, out_c, kernel_size, dilation=d, padding=d * (kernel_size - 1) // 2), nn.SiLU()]
            c = out_c
        self.convs = nn.Sequential(*layers, nn.Conv1d(c, input_spec["channels"], 1))
        self.cond_dim = cond_dim
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv1d, nn.Linear)):
                m.reset_parameters()
        self.reset_likelihood()

    def forward(self, z: torch.Tensor, cond: torch.Tensor | None = None, target: Any = None) -> DecoderOutput:
        if self.cond_dim:
            z = torch.cat([z, cond], dim=-1)
        h = self.fc(z).view(-1, self.start, self.length)  # (N, c0*T) → (N, c0, T)
        return self.output(self.convs(h).transpose(1, 2))  # (N, C, T) → (N, T, C)
