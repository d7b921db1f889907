"""Bidirectional GRU encoder for windows of a multichannel series."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vaeflow.models.outputs import EncoderOutput
from vaeflow.registry import ENCODERS


@ENCODERS.register("gru")
class GRUEncoder(nn.Module):
    """Bidirectional GRU (Cho et al. 2014); the last forward and backward states feed the head.

    Args:
        input_spec: the data's spec (``channels``, ``length``).
        latent_dim: size of z.
        cond_dim: size of the condition vector appended to the final states; 0 for none.
        hidden: GRU state size per direction.
        layers: stacked GRU layers.

    Shapes:
        x: (N, T, C); cond: (N, cond_dim) → mu, logvar: (N, latent_dim)
    """

    # The modalities whose batches this module reads; config validation rejects it for any other.
    modalities = ("timeseries",)

    def __init__(self, *, input_spec: dict[str, Any], latent_dim: int, cond_dim: int = 0, hidden: int = 64, layers: int = 1):
        super().__init__()
        self.gru = nn.GRU(input_spec["channels"], hidden, num_layers=layers, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden + cond_dim, 2 * latent_dim)
        self.cond_dim = cond_dim
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.gru.reset_parameters()
        self.head.reset_parameters()
        # Start near the prior (small mu, logvar ≈ 0) so early KL terms stay moderate.
        nn.init.zeros_(self.head.bias)
        self.head.weight.data.mul_(0.1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> EncoderOutput:
        _, h = self.gru(x)  # h: (layers * 2, N, H)
        h = torch.cat([h[-2], h[-1]], dim=-1)  # last layer's forward and backward states → (N, 2H)
        if self.cond_dim:
            h = torch.cat([h, cond], dim=-1)
        mu, logvar = self.head(h).chunk(2, dim=-1)  # (N, 2D) → 2 × (N, D)
        return EncoderOutput(mu=mu, logvar=logvar.clamp(-12.0, 8.0))
