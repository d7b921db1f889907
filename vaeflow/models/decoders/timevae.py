"""Interpretable TimeVAE decoder: polynomial trend + seasonal blocks + residual (Desai et al. 2021)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vaeflow.models.decoders.sequence_gaussian import SequenceGaussian
from vaeflow.models.outputs import DecoderOutput
from vaeflow.registry import DECODERS


@DECODERS.register("timevae")
class TimeVAEDecoder(SequenceGaussian):
    """Means = trend + Σ seasonal blocks + residual, each read from z (https://arxiv.org/abs/2111.08095).

    - trend: per channel, a polynomial Σ_p a_p (t/T)^p of degree ``trend_degree`` (p = 0 is the level)
      with coefficients a linear map of z;
    - seasonal block (m, L): m season values per channel from z, season (t // L) mod m at step t;
    - residual: the conv1d decoder's stack (``residual_channels``; empty for none).

    Args:
        input_spec: the data's spec (``channels``, ``length``).
        latent_dim: size of z.
        cond_dim: size of the condition vector concatenated to z; 0 for none.
        scale_init: initial standard deviation of the Gaussian likelihood (learned per channel).
        trend_degree: polynomial degree of the trend (0: level only).
        seasons: [number of seasons, steps per season] pairs, e.g. [[7, 1], [4, 6]].
        residual_channels: channels of the residual's dilated conv blocks; [] disables it.

    Shapes:
        z: (N, latent_dim); cond: (N, cond_dim) → params: (N, T, C)
    """

    # The modalities whose batches this module reads; config validation rejects it for any other.
    modalities = ("timeseries",)

    def __init__(self, *, input_spec: dict[str, Any], latent_dim: int, cond_dim: int = 0, scale_init: float = 0.1, trend_degree: int = 2,
                 seasons: list[list[int]] = (), residual_channels: list[int] = (32, 32)):
        super().__init__(input_spec["channels"], scale_init)
        c, t = input_spec["channels"], input_spec["length"]
        d = latent_dim + cond_dim
        self.channels, self.length = c, t
        self.trend = nn.Linear(d, c * (trend_degree + 1))
        self.register_buffer("powers", (torch.arange(t) / t)[:, None] ** torch.arange(trend_degree + 1), persistent=False)  # (T, P)
        self.seasonal = nn.ModuleList()
        indices = []
        for pair in seasons:
            if len(pair) != 2 or min(pair) < 1:
                raise ValueError(f"each seasons entry is [number of seasons, steps per season] ≥ 1, got {pair}")
            m, length = pair
            self.seasonal.append(nn.Linear(d, c * m))
            indices.append((torch.arange(t) // length) % m)  # (T,) season of each step
        self.register_buffer("season_index", torch.stack(indices) if indices else torch.zeros(0, t, dtype=torch.long), persistent=False)
        self.residual = None
        if residual_channels:
            from vaeflow.models.decoders.conv1d import Conv1dDecoder

            self.residual = Conv1dDecoder(input_spec=input_spec, latent_dim=latent_dim, cond_dim=cond_dim,
                                          channels=list(residual_channels))
            del self.residual.log_scale  # this decoder's own scale is the one that counts
        self.cond_dim = cond_dim
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.trend.reset_parameters()
        for layer in self.seasonal:
            layer.reset_parameters()
        if self.residual is not None:
            for m in self.residual.modules():
                if isinstance(m, (nn.Conv1d, nn.Linear)):
                    m.reset_parameters()
        self.reset_likelihood()

    def components(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The additive parts of the mean, for interpretation. Shapes: each (N, T, C)."""
        zc = torch.cat([z, cond], dim=-1) if self.cond_dim else z
        n = z.shape[0]
        coeffs = self.trend(zc).view(n, self.channels, -1)  # (N, C*P) → (N, C, P)
        parts = {"trend": torch.einsum("tp,ncp->ntc", self.powers, coeffs)}
        for i, layer in enumerate(self.seasonal):
            values = layer(zc).view(n, self.channels, -1)  # (N, C*m) → (N, C, m)
            parts[f"season{i}"] = values[:, :, self.season_index[i]].transpose(1, 2)  # (N, C, T) → (N, T, C)
        if self.residual is not None:
            h = self.residual.fc(zc).view(n, self.residual.start, self.length)  # (N, c0*T) → (N, c0, T)
            parts["residual"] = self.residual.convs(h).transpose(1, 2)
        return parts

    def forward(self, z: torch.Tensor, cond: torch.Tensor | None = None, target: Any = None) -> DecoderOutput:
        return self.output(sum(self.components(z, cond).values()))
