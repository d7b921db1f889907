"""Convolutional image encoder: strided conv stack → (mu, logvar)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vaeflow.models.outputs import EncoderOutput
from vaeflow.registry import ENCODERS


@ENCODERS.register("conv2d")
class Conv2dEncoder(nn.Module):
    """Each block halves height and width: Conv(k=4, s=2, p=1) → BatchNorm-free → activation.

    Args:
        input_spec: the data's spec (``channels``, ``height``, ``width``).
        latent_dim: size of z.
        cond_dim: size of the condition vector appended before the head; 0 for none.
        channels: output channels of each strided block.
        hidden: width of the fully connected layer before the head.

    Shapes:
        x: (N, C, H, W); cond: (N, cond_dim) → mu, logvar: (N, latent_dim)
    """

    # The modalities whose batches this module reads; config validation rejects it for any other.
    modalities = ("image",)

    def __init__(
        self,
        *,
        input_spec: dict[str, Any],
        latent_dim: int,
        cond_dim: int = 0,
        channels: list[int] = (32, 64),
        hidden: int = 256,
    ):
        super().__init__()
        c, h, w = input_spec["channels"], input_spec["height"], input_spec["width"]
        layers: list[nn.Module] = []
        for out_c in channels:
            layers += [nn.Conv2d(c, out_c, kernel_size=4, stride=2, padding=1), nn.SiLU()]
            c, h, w = out_c, (h + 1) // 2, (w + 1) // 2  # k=4, s=2, p=1 halves, rounding up
        self.features = nn.Sequential(*layers, nn.Flatten())  # (N, c, h, w) → (N, c*h*w)
        self.fc = nn.Sequential(nn.Linear(c * h * w + cond_dim, hidden), nn.SiLU())
        self.head = nn.Linear(hidden, 2 * latent_dim)
        self.cond_dim = cond_dim
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.reset_parameters()
        # Start near the prior (small mu, logvar ≈ 0) so early KL terms stay moderate.
        nn.init.zeros_(self.head.bias)
        self.head.weight.data.mul_(0.1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> EncoderOutput:
        h = self.features(x)
        if self.cond_dim:
            h = torch.cat([h, cond], dim=-1)
        mu, logvar = self.head(self.fc(h)).chunk(2, dim=-1)  # (N, 2D) → 2 × (N, D)
        return EncoderOutput(mu=mu, logvar=logvar.clamp(-12.0, 8.0))
