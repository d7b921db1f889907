"""Graph encoder for molecules: GINE message passing over atoms and bonds → graph pooling → (mu, logvar)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vaeflow.models.outputs import EncoderOutput
from vaeflow.registry import ENCODERS


class CategoricalEmbedding(nn.Module):
    """Sum of one embedding per categorical feature column (as OGB's AtomEncoder).

    Shapes:
        x: (M, len(sizes)) long → (M, dim)
    """

    def __init__(self, sizes: list[int], dim: int):
        super().__init__()
        self.tables = nn.ModuleList(nn.Embedding(n, dim) for n in sizes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for t in self.tables:
            nn.init.xavier_uniform_(t.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(t(x[:, i]) for i, t in enumerate(self.tables))


@ENCODERS.register("gine")
class GINEEncoder(nn.Module):
    """GINE layers (Hu et al. 2020, https://arxiv.org/abs/1905.12265) with bond features, pre-norm
    residual blocks, then sum + mean pooling; invariant to the order of atoms.

    Args:
        input_spec: the data's spec (``atom_feature_sizes``, ``bond_feature_sizes``).
        latent_dim: size of z.
        cond_dim: size of the condition vector appended to the pooled graph; 0 for none.
        hidden: node embedding width.
        layers: message-passing layers.
        dropout: dropout inside each layer's MLP.

    Shapes:
        batch: a PyG ``Batch`` with x (M, F_atom) long, edge_index (2, E), edge_attr (E, F_bond) long,
        batch (M,); cond: (N, cond_dim) → mu, logvar: (N, latent_dim)
    """

    # The modalities whose batches this module reads; config validation rejects it for any other.
    modalities = ("molecule",)

    def __init__(
        self,
        *,
        input_spec: dict[str, Any],
        latent_dim: int,
        cond_dim: int = 0,
        hidden: int = 128,
        layers: int = 4,
        dropout: float = 0.0,
    ):
        super().__init__()
        from torch_geometric.nn import GINEConv

        self.atoms = CategoricalEmbedding(input_spec["atom_feature_sizes"], hidden)
        self.bonds = nn.ModuleList(CategoricalEmbedding(input_spec["bond_feature_sizes"], hidden) for _ in range(layers))
        self.convs = nn.ModuleList(
            GINEConv(nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Dropout(dropout), nn.Linear(hidden, hidden)),
                     train_eps=True)
            for _ in range(layers)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(layers))
        self.head = nn.Sequential(nn.Linear(2 * hidden + cond_dim, hidden), nn.SiLU(), nn.Linear(hidden, 2 * latent_dim))
        self.cond_dim = cond_dim
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if m is not self and hasattr(m, "reset_parameters"):
                m.reset_parameters()
        # Start near the prior (small mu, logvar ≈ 0) so early KL terms stay moderate.
        last = self.head[-1]
        nn.init.zeros_(last.bias)
        last.weight.data.mul_(0.1)

    def forward(self, batch: Any, cond: torch.Tensor | None = None) -> EncoderOutput:
        from torch_geometric.nn import global_add_pool, global_mean_pool

        h = self.atoms(batch.x)  # (M, hidden)
        for conv, norm, bonds in zip(self.convs, self.norms, self.bonds):
            h = h + conv(norm(h), batch.edge_index, bonds(batch.edge_attr))  # residual, pre-norm
        n = batch.num_graphs
        g = torch.cat([global_add_pool(h, batch.batch, n), global_mean_pool(h, batch.batch, n)], -1)  # (N, 2·hidden)
        if self.cond_dim:
            g = torch.cat([g, cond], -1)
        mu, logvar = self.head(g).chunk(2, dim=-1)  # (N, 2D) → 2 × (N, D)
        return EncoderOutput(mu=mu, logvar=logvar.clamp(-12.0, 8.0))
