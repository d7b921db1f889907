"""Autoregressive priors over a grid of discrete codes (the VQ-VAE's learned prior)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MaskedConv2d(nn.Conv2d):
    """A 'same' convolution whose kernel sees only the positions before its centre in raster order
    (row by row, left to right): type A (``include_centre=False``, the first layer, so no output sees
    its own input) or type B (``include_centre=True``, the later layers). PixelCNN, van den Oord et
    al. 2016, https://arxiv.org/abs/1601.06759.

    Shapes:
        x: (N, C_in, H, W) → (N, C_out, H, W)
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, include_centre: bool):
        if kernel_size % 2 == 0:
            raise ValueError(f"a masked convolution needs an odd kernel size, got {kernel_size}")
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        mask = torch.zeros(kernel_size, kernel_size)
        c = kernel_size // 2
        mask[:c] = 1  # the rows above
        mask[c, : c + int(include_centre)] = 1  # the centre row, left of (and for type B at) the centre
        self.register_buffer("mask", mask[None, None], persistent=False)  # (1, 1, k, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


class PixelCNNPrior(nn.Module):
    """p(codes) = Π_i p(c_i | c_<i [, label]) over an h×w grid of K-way codes, raster order.

    Embedding → type-A masked conv → ``layers`` residual type-B blocks → 1×1 conv to K logits. A
    class-conditional prior adds a learned per-class bias to every block's input (the conditional
    PixelCNN of van den Oord et al. 2016b, https://arxiv.org/abs/1606.05328, without its gated
    two-stack layers: a small prior for small grids, which keeps the plain PixelCNN's blind spot).

    Args:
        num_codes: K.
        channels: width of every layer.
        layers: residual masked-conv blocks after the first layer.
        num_classes: classes of a class-conditional prior; 0 for none.
        kernel_size: odd kernel of the masked convolutions.

    Shapes:
        codes: (N, h, w) long; labels: (N,) long → logits (N, K, h, w)
    """

    def __init__(self, *, num_codes: int, channels: int, layers: int, num_classes: int = 0, kernel_size: int = 5):
        super().__init__()
        self.num_codes = num_codes
        self.embed = nn.Embedding(num_codes, channels)
        self.first = MaskedConv2d(channels, channels, kernel_size, include_centre=False)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.SiLU(), MaskedConv2d(channels, channels, 3, include_centre=True), nn.SiLU(),
                          nn.Conv2d(channels, channels, 1))
            for _ in range(layers)
        )
        self.head = nn.Sequential(nn.SiLU(), nn.Conv2d(channels, num_codes, 1))
        self.label_bias = nn.Embedding(num_classes, channels * layers) if num_classes else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Embedding)):
                m.reset_parameters()
        if self.label_bias is not None:
            nn.init.zeros_(self.label_bias.weight)  # starts as the unconditional prior

    def forward(self, codes: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if (self.label_bias is None) != (labels is None):
            raise ValueError("this prior is class-conditional: pass labels=..." if labels is None
                             else "this prior is unconditional: pass no labels")
        h = self.first(self.embed(codes).permute(0, 3, 1, 2).contiguous())  # (N, h, w, C) → (N, C, h, w)
        biases = [None] * len(self.blocks)
        if self.label_bias is not None:
            biases = self.label_bias(labels)[:, :, None, None].chunk(len(self.blocks), dim=1)  # each (N, C, 1, 1)
        for block, bias in zip(self.blocks, biases):
            h = h + block(h if bias is None else h + bias)
        return self.head(h)

    def log_prob(self, codes: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """log p(codes) in nats, summed over the grid, computed in fp32. Shapes: (N, h, w) → (N,)."""
        logits = self(codes, labels).float()
        return -F.cross_entropy(logits, codes, reduction="none").flatten(1).sum(1)

    @torch.no_grad()
    def sample(self, n: int, grid: tuple[int, int], *, labels: torch.Tensor | None = None, temperature: float = 1.0,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw codes position by position in raster order from softmax(logits / temperature).

        Shapes:
            → (n, h, w) long
        """
        device = self.embed.weight.device
        codes = torch.zeros(n, *grid, dtype=torch.long, device=device)
        for i in range(grid[0]):
            for j in range(grid[1]):
                logits = self(codes, labels)[:, :, i, j].float() / temperature  # (n, K)
                codes[:, i, j] = torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]
        return codes
