"""GRU sequence decoder with a Gaussian likelihood (learned per-channel scale)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vaeflow.models.decoders.sequence_gaussian import SequenceGaussian
from vaeflow.models.outputs import DecoderOutput
from vaeflow.registry import DECODERS


@DECODERS.register("gru")
class GRUDecoder(SequenceGaussian):
    """z sets the GRU's initial state and is fed at every step; a linear layer reads each state.

    Non-autoregressive: all T steps are decoded in one pass from z alone, so ``target`` (teacher
    forcing) is not used and sampling costs one pass.

    Args:
        input_spec: the data's spec (``channels``, ``length``).
        latent_dim: size of z.
        cond_dim: size of the condition vector concatenated to z; 0 for none.
        scale_init: initial standard deviation of the Gaussian likelihood (learned per channel).
        hidden: GRU state size.
        layers: stacked GRU layers.

    Shapes:
        z: (N, latent_dim); cond: (N, cond_dim) → params: (N, T, C)
    """

    # The modalities whose batches this module reads; config validation rejects it for any other.
    modalities = ("timeseries",)

    def __init__(self, *, input_spec: dict[str, Any], latent_dim: int, cond_dim: int = 0, scale_init: float = 0.1, hidden: int = 64, layers: int = 1):
        super().__init__(input_spec["channels"], scale_init)
        self.length = input_spec["length"]
        self.layers, self.hidden = layers, hidden
        self.init_state = nn.Linear(latent_dim + cond_dim, layers * hidden)
        self.gru = nn.GRU(latent_dim + cond_dim, hidden, num_layers=layers, batch_first=True)
        self.out = nn.Linear(hidden, input_spec["channels"])
        self.cond_dim = cond_dim
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.init_state.reset_parameters()
        self.gru.reset_parameters()
        self.out.reset_parameters()
        self.reset_likelihood()

    def forward(self, z: torch.Tensor, cond: torch.Tensor | None = None, target: Any = None) -> DecoderOutput:
        if self.cond_dim:
            z = torch.cat([z, cond], dim=-1)
        n = z.shape[0]
        h0 = torch.tanh(self.init_state(z)).view(n, self.layers, self.hidden).transpose(0, 1).contiguous()  # (layers, N, H)
        steps = z[:, None, :].expand(n, self.length, z.shape[-1])  # (N, D) → (N, T, D)
        h, _ = self.gru(steps, h0)
        return self.output(self.out(h))
