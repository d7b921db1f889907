"""Transposed-convolution image decoder with a Bernoulli, Gaussian or discretised-logistic pixel likelihood."""

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
        likelihood: ``bernoulli`` (logits; for binarised pixels), ``gaussian`` (means with a
            learned per-channel scale, as in σ-VAE, Rybkin et al. 2021; a density on [0, 1]) or
            ``discretized_logistic`` (a logistic per sub-pixel with a learned per-channel scale,
            integrated over each of the 256 bins of an 8-bit value, as in Kingma et al. 2016 and
            PixelCNN++, Salimans et al. 2017: a probability mass, so its NLL is an exact code
            length; the one for 8-bit RGB or grey photos).
        scale: ``channel``: one learned scale per channel (the default); ``pixel``: the network also
            outputs a log scale per sub-pixel, added to the per-channel one (sharper likelihoods where
            the image is predictable; Gaussian and discretised logistic only).

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
        likelihood: Literal["bernoulli", "gaussian", "discretized_logistic"] = "bernoulli",
        scale: Literal["channel", "pixel"] = "channel",
    ):
        super().__init__()
        c, h, w = input_spec["channels"], input_spec["height"], input_spec["width"]
        stride = 2 ** len(channels)
        if h % stride or w % stride:
            raise ValueError(
                f"image size {h}x{w} is not divisible by 2^{len(channels)}; use fewer decoder channels"
            )
        self.start = (channels[0], h // stride, w // stride)
        if scale == "pixel" and likelihood == "bernoulli":
            raise ValueError("scale: pixel needs a likelihood with a scale (gaussian or discretized_logistic)")
        self.likelihood = likelihood
        self.per_pixel = scale == "pixel"
        self.fc = nn.Sequential(
            nn.Linear(latent_dim + cond_dim, hidden),
            nn.SiLU(),
            nn.Linear(hidden, math.prod(self.start)),
            nn.SiLU(),
        )
        blocks: list[nn.Module] = []
        outs = [*channels[1:], 2 * c if self.per_pixel else c]  # pixel scales: means, then log scales
        for i, (cin, cout) in enumerate(zip(channels, outs)):
            blocks.append(nn.ConvTranspose2d(cin, cout, kernel_size=4, stride=2, padding=1))
            if i < len(channels) - 1:
                blocks.append(nn.SiLU())
        self.deconv = nn.Sequential(*blocks)
        # Per-channel log scale of the Gaussian (log standard deviation) or logistic likelihood.
        self.log_scale = nn.Parameter(torch.zeros(c)) if likelihood != "bernoulli" else None
        self.dims = c * h * w
        self.cond_dim = cond_dim
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.ConvTranspose2d, nn.Linear)):
                m.reset_parameters()
        if self.log_scale is not None:
            nn.init.zeros_(self.log_scale)
            if self.likelihood == "discretized_logistic":
                # Scale 0.05 (≈ 13 of the 255 levels): wide enough for gradients to reach the means at the start.
                nn.init.constant_(self.log_scale, math.log(0.05))

    def forward(self, z: torch.Tensor, cond: torch.Tensor | None = None, target: Any = None) -> DecoderOutput:
        if self.cond_dim:
            z = torch.cat([z, cond], dim=-1)
        h = self.fc(z).view(-1, *self.start)  # (N, c0*h0*w0) → (N, c0, h0, w0)
        params = self.deconv(h)
        if self.log_scale is None:
            return DecoderOutput(params=params)
        log_scale = self.log_scale.view(1, -1, 1, 1)
        if self.per_pixel:
            params, offset = params.chunk(2, dim=1)  # (N, 2C, H, W) → 2 × (N, C, H, W)
            # Bounded, so one confident pixel cannot send its log-likelihood to ±∞ early in training.
            log_scale = log_scale + 3.0 * torch.tanh(offset / 3.0)
        return DecoderOutput(params=torch.sigmoid(params), scale=log_scale)

    def log_prob(self, output: DecoderOutput, target: torch.Tensor) -> torch.Tensor:
        """log p(target | z), summed over pixels.

        Shapes:
            output.params: (..., C, H, W); target: broadcastable to it → (...)
        """
        if self.likelihood == "bernoulli":
            logits = output.params
            lp = -F.binary_cross_entropy_with_logits(logits, target.expand_as(logits), reduction="none")
        elif self.likelihood == "gaussian":
            lp = gaussian_log_density(target, output.params, output.scale)
        else:
            lp = discretized_logistic_log_prob(target, output.params, output.scale)
        return lp.flatten(-3).sum(-1)

    def bits_per_dim(self, nll: float) -> float | None:
        """A per-image NLL in nats as bits per dimension (D = C·H·W sub-pixels); None for Bernoulli.

        ``discretized_logistic``: the NLL is −log P(k) of the 8-bit values, so bits/dim =
        NLL / (D ln 2) exactly. ``gaussian``: the NLL is −log p(x) of the density at x = k/255; the
        mass of the 255ths-wide bin around x is about p(x)/255, so bits/dim = (NLL + D ln 255) / (D ln 2):
        the midpoint rule, an approximation rather than a bound (the density is not dequantised).
        """
        if self.likelihood == "bernoulli":
            return None
        offset = self.dims * math.log(255.0) if self.likelihood == "gaussian" else 0.0
        return (nll + offset) / (self.dims * math.log(2.0))

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
        if self.likelihood == "gaussian":
            noise = torch.randn(m.shape, generator=generator, device=m.device, dtype=m.dtype)
            return (m + output.scale.exp() * noise).clamp(0, 1)
        # Logistic draws by inverse CDF, rounded to the nearest of the 256 levels.
        u = torch.rand(m.shape, generator=generator, device=m.device, dtype=m.dtype).clamp(1e-5, 1 - 1e-5)
        x = output.params + output.scale.exp() * (torch.log(u) - torch.log1p(-u))
        return (x.clamp(0, 1) * 255).round() / 255


def discretized_logistic_log_prob(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Elementwise log P(k) of 8-bit values k = 255·x under a logistic(mean, exp(log_scale)) on [0, 1].

    Bin k covers [(k − ½)/255, (k + ½)/255], the end bins extend to ±∞, so the 256 masses sum to 1:
    P(k) = σ(a) − σ(b) with a = ((k + ½)/255 − mean)/s, b = ((k − ½)/255 − mean)/s, computed as
    log σ(a) + log σ(−b) + log(1 − e^(b−a)) (stable in both tails; a = +∞ for k = 255, b = −∞ for 0).

    Shapes:
        x (values k/255), mean, log_scale: broadcastable to each other → their broadcast shape
    """
    x, mean = torch.broadcast_tensors(x, mean)
    inv_s = torch.exp(-log_scale)
    k = torch.round(x * 255.0)
    half = 0.5 / 255.0
    a = (k / 255.0 + half - mean) * inv_s
    b = (k / 255.0 - half - mean) * inv_s
    a = torch.where(k >= 255, torch.full_like(a, math.inf), a)
    b = torch.where(k <= 0, torch.full_like(b, -math.inf), b)
    # b − a = −(1/255)/s in the interior bins, −∞ in the end bins (where the last term is 0).
    return F.logsigmoid(a) + F.logsigmoid(-b) + torch.log(-torch.expm1(b - a))
