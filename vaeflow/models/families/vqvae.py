"""The VQ-VAE family: a K×D codebook with straight-through gradients, optional EMA codebook updates
and dead-code restarts, and a PixelCNN prior over the code grid trained in a second phase."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from vaeflow import registry
from vaeflow.config import ConfigError
from vaeflow.models.decoders.conv2d import Conv2dDecoder
from vaeflow.models.encoders.conv2d import Conv2dEncoder
from vaeflow.models.families.base import Family, FamilyOptimizer, Objective, unwrap
from vaeflow.models.outputs import DecoderOutput
from vaeflow.models.priors import PixelCNNPrior


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


@dataclasses.dataclass
class Quantized:
    """The nearest code of every grid position.

    Shapes: z_q (N, D, h, w) the codes' vectors; codes (N, h, w) long.
    """

    z_q: torch.Tensor
    codes: torch.Tensor


@dataclasses.dataclass
class _BatchStats:
    """What one training batch contributes to the codebook update (this worker's share)."""

    counts: torch.Tensor  # (K,) how often each code was picked
    sums: torch.Tensor  # (K, D) sum of the encoder outputs assigned to each code
    vectors: torch.Tensor  # (M, D) the encoder outputs, restart candidates
    errors: torch.Tensor  # (M,) their squared distance to their code


class VectorQuantizer(nn.Module):
    """Nearest-neighbour quantisation onto a K×D codebook (van den Oord et al. 2017,
    https://arxiv.org/abs/1711.00937), with optional EMA updates (Razavi et al. 2019,
    https://arxiv.org/abs/1906.00446) and dead-code restarts.

    A training forward pass only records its batch statistics; ``update()`` (run after each step of
    the VQ-VAE's optimizer) applies them: the EMA of the codes' counts and sums (when ``ema``),
    the idle counters, and the restart of codes idle for ``restart_after_steps`` steps onto the
    encoder outputs farthest from their codes. Under DDP the counts and sums are all-reduced and the
    restart vectors are chosen on rank 0 and broadcast, so every worker keeps the same codebook. A
    phase that does not step that optimizer (the prior's) leaves the codebook as it is.

    Args:
        num_codes: K.
        code_dim: D.
        ema: EMA updates instead of the codebook's gradient (the codebook is then not a trained parameter).
        decay: EMA decay.
        restart_after_steps: idle steps before a code is restarted; 0 never restarts.

    Shapes:
        z_e: (N, D, h, w) → Quantized
    """

    # Guards the division by a code's EMA count once it has decayed towards 0.
    EPS = 1e-5

    def __init__(self, *, num_codes: int, code_dim: int, ema: bool = False, decay: float = 0.99,
                 restart_after_steps: int = 0):
        super().__init__()
        self.ema, self.decay, self.restart_after_steps = ema, decay, restart_after_steps
        # A parameter even with EMA (requires_grad False): DDP broadcasts buffers from rank 0 at every
        # forward pass, which would hide a worker whose codebook drifted.
        self.codebook = nn.Parameter(torch.empty(num_codes, code_dim), requires_grad=not ema)
        if ema:
            self.register_buffer("ema_count", torch.empty(num_codes))
            self.register_buffer("ema_sum", torch.empty(num_codes, code_dim))
        self.register_buffer("idle_steps", torch.zeros(num_codes, dtype=torch.long))
        self._stats: _BatchStats | None = None
        self.reset_parameters()

    @property
    def num_codes(self) -> int:
        return self.codebook.shape[0]

    def reset_parameters(self) -> None:
        k = self.num_codes
        with torch.no_grad():
            self.codebook.uniform_(-1.0 / k, 1.0 / k)
            if self.ema:
                # As if every code had been picked once at its own place: an unused code stays put
                # (its count and sum decay together) instead of collapsing to 0.
                self.ema_count.fill_(1.0)
                self.ema_sum.copy_(self.codebook)
            self.idle_steps.zero_()
        self._stats = None

    def forward(self, z_e: torch.Tensor) -> Quantized:
        n, d, h, w = z_e.shape
        flat = z_e.detach().float().permute(0, 2, 3, 1).reshape(-1, d)  # (N, D, h, w) → (N·h·w, D)
        codebook = self.codebook.float()
        with torch.no_grad():
            dist2 = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ codebook.T + codebook.pow(2).sum(1)  # (N·h·w, K)
            errors, codes = dist2.min(1)
        if self.training:
            k = self.num_codes
            self._stats = _BatchStats(
                counts=torch.bincount(codes, minlength=k).float(),
                sums=torch.zeros(k, d, device=flat.device).index_add_(0, codes, flat),
                vectors=flat, errors=errors.clamp_min(0))
        z_q = self.codebook[codes].view(n, h, w, d).permute(0, 3, 1, 2)  # (N·h·w, D) → (N, D, h, w)
        return Quantized(z_q=z_q, codes=codes.view(n, h, w))

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """The codes' vectors. Shapes: (N, h, w) long → (N, D, h, w)."""
        return self.codebook[codes].permute(0, 3, 1, 2)

    @torch.no_grad()
    def update(self) -> None:
        """Apply the last training batch's statistics (see the class docstring); a no-op without one."""
        stats, self._stats = self._stats, None
        if stats is None:
            return
        counts, sums = stats.counts, stats.sums
        if _distributed():
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        if self.ema:
            self.ema_count.mul_(self.decay).add_(counts, alpha=1 - self.decay)
            self.ema_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
            self.codebook.copy_(self.ema_sum / self.ema_count.clamp_min(self.EPS)[:, None])
        self.idle_steps.add_(1).masked_fill_(counts > 0, 0)
        if self.restart_after_steps:
            self._restart(self.idle_steps >= self.restart_after_steps, stats)

    def _restart(self, dead: torch.Tensor, stats: _BatchStats) -> None:
        """Move the dead codes onto rank 0's encoder outputs that are farthest from their codes."""
        n = min(int(dead.sum()), stats.vectors.shape[0])  # the same on every rank: ``dead`` is all-reduced
        if n == 0:
            return
        new = stats.vectors[stats.errors.topk(n).indices]  # (n, D)
        if _distributed():
            dist.broadcast(new, src=0)
        idx = dead.nonzero()[:n, 0]
        self.codebook[idx] = new.to(self.codebook.dtype)
        if self.ema:
            self.ema_count[idx] = 1.0
            self.ema_sum[idx] = new
        self.idle_steps[idx] = 0


class GridDecoder(Conv2dDecoder):
    """The conv2d decoder fed with a code grid: a 1×1 convolution from D to ``channels[0]`` takes
    the place of its fully connected layers, the rest (upsampling, likelihood) is the conv2d decoder's.

    Shapes:
        z: (N, D, h, w), with h×w the decoder's starting grid → params (N, C, H, W)
    """

    def __init__(self, *, input_spec: dict[str, Any], code_dim: int, **options: Any):
        super().__init__(input_spec=input_spec, latent_dim=code_dim, **options)
        self.fc = nn.Sequential(nn.Conv2d(code_dim, self.start[0], kernel_size=1), nn.SiLU())
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        for m in self.fc.modules():
            if isinstance(m, nn.Conv2d):
                m.reset_parameters()


@dataclasses.dataclass
class VQVAEOutput:
    """One forward pass. Shapes: z_e (N, D, h, w); decoded from the straight-through z_q; prior_logits (N, K, h, w)."""

    z_e: torch.Tensor
    quantized: Quantized
    decoded: DecoderOutput
    prior_logits: torch.Tensor


class VQVAE(nn.Module):
    """Encoder → continuous grid z_e → nearest codes z_q → decoder, plus a PixelCNN prior over the codes.

    The decoder reads z_e + sg[z_q − z_e] (the straight-through estimator: z_q forward, the
    decoder's gradient copied to z_e backward). ``latent_dim`` is D·h·w, the size of the flattened
    grid of code vectors that ``encode`` returns. Only the prior is class-conditional.
    """

    def __init__(self, *, encoder: nn.Module, quantizer: VectorQuantizer, decoder: GridDecoder,
                 prior: PixelCNNPrior, grid: tuple[int, int], num_classes: int = 0):
        super().__init__()
        self.encoder, self.quantizer, self.decoder, self.prior = encoder, quantizer, decoder, prior
        self.grid = grid
        self.code_dim = quantizer.codebook.shape[1]
        self.latent_dim = self.code_dim * grid[0] * grid[1]
        self.num_classes, self.condition_dim = num_classes, 0

    def labels_for_prior(self, labels: torch.Tensor | None) -> torch.Tensor | None:
        if not self.num_classes:
            return None
        if labels is None:
            raise ValueError("this VQ-VAE's prior is class-conditional: pass class labels (labels=...)")
        return labels

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> VQVAEOutput:
        z_e = self.encoder(x)
        q = self.quantizer(z_e)
        z_st = z_e + (q.z_q - z_e).detach()  # straight-through: the value of z_q, the gradient of z_e
        return VQVAEOutput(z_e=z_e, quantized=q, decoded=self.decoder(z_st),
                           prior_logits=self.prior(q.codes, self.labels_for_prior(labels)))


def _grid_encoder(input_spec: dict[str, Any], code_dim: int, options: dict[str, Any]) -> tuple[nn.Module, tuple[int, int]]:
    """The conv2d encoder's strided blocks, then a 1×1 convolution to D channels, and the grid it gives."""
    conv = Conv2dEncoder(input_spec=input_spec, latent_dim=code_dim, **options)
    blocks = list(conv.features)[:-1]  # its Flatten (and the fully connected head) are left out
    last = [m for m in blocks if isinstance(m, nn.Conv2d)][-1].out_channels
    h, w = input_spec["height"], input_spec["width"]
    for _ in range(sum(isinstance(m, nn.Conv2d) for m in blocks)):  # each strided block halves, rounding up
        h, w = (h + 1) // 2, (w + 1) // 2
    return nn.Sequential(*blocks, nn.Conv2d(last, code_dim, kernel_size=1)), (h, w)


def build_vqvae(model_config: Any, input_spec: dict[str, Any]) -> VQVAE:
    """Build the VQ-VAE from ``model`` (encoder / decoder options of conv2d, ``vq``) and the data's spec."""
    for part in ("encoder", "decoder"):
        spec = getattr(model_config, part)
        if spec.name != "conv2d":
            raise ValueError(f"the vqvae family builds on the conv2d encoder and decoder; set model.{part}.name: conv2d")
        if "hidden" in spec.options:
            raise ValueError(f"model.{part}.hidden: the VQ-VAE has no fully connected layer; remove the key")
    num_classes = int(input_spec.get("num_classes", 0)) if model_config.conditional else 0
    if model_config.conditional and not num_classes:
        raise ValueError("model.conditional is true but the data set has no class labels; set it to false")
    vq, d = model_config.vq, model_config.latent_dim
    encoder, grid = _grid_encoder(input_spec, d, dict(model_config.encoder.options))
    decoder = GridDecoder(input_spec=input_spec, code_dim=d, **model_config.decoder.options)
    if tuple(decoder.start[1:]) != grid:
        raise ValueError(f"the encoder's code grid is {grid[0]}×{grid[1]} but the decoder starts from "
                         f"{decoder.start[1]}×{decoder.start[2]}; give model.encoder.channels and "
                         "model.decoder.channels the same number of entries")
    return VQVAE(
        encoder=encoder, decoder=decoder, grid=grid, num_classes=num_classes,
        quantizer=VectorQuantizer(num_codes=vq.codebook_size, code_dim=d, ema=vq.ema, decay=vq.decay,
                                  restart_after_steps=vq.restart_after_steps),
        prior=PixelCNNPrior(num_codes=vq.codebook_size, channels=vq.prior_channels, layers=vq.prior_layers,
                            num_classes=num_classes),
    )


def perplexity(codes: torch.Tensor, num_codes: int) -> torch.Tensor:
    """exp(H) of the codes' frequencies: K when all are used equally, 1 when one code takes all.

    Shapes: codes (...) long → scalar
    """
    p = torch.bincount(codes.flatten(), minlength=num_codes).float() / codes.numel()
    return torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum())


@registry.FAMILIES.register("vqvae")
class VQVAEFamily(Family):
    """VQ-VAE (van den Oord et al. 2017, https://arxiv.org/abs/1711.00937) with a PixelCNN prior.

    Terms (batch means, per image): ``recon`` = −log p(x | z_q); ``codebook`` = ‖sg[z_e] − z_q‖² and
    ``commitment`` = ‖z_e − sg[z_q]‖² summed over the grid (equal values, different gradients);
    ``prior_nll`` = −log p(codes) under the prior, in nats, and ``prior_bits_per_dim`` the same over
    the image's C·H·W sub-pixels in bits; ``neg_elbo`` = recon + prior_nll, the negative ELBO of a
    discrete-latent VAE with a deterministic (one-hot) encoder, for which KL(q ‖ p) = −log p(codes):
    an upper bound on −log p(x), in nats, comparable to the Gaussian VAE's; ``usage``, the fraction
    of the K codes a batch uses, and ``perplexity``, exp of the entropy of its code frequencies
    (per worker's batch, averaged over the epoch).

    Two optimizers, two phases (``model.vq.prior_start_epoch``): before it, ``vqvae`` minimises
    recon + codebook + β · commitment (no codebook term with EMA); from it on, ``prior`` minimises
    prior_nll on the codes of the frozen VQ-VAE. The idle optimizer's weights are 0, so the loop
    does not step it. Validation scores the full objective, and checkpoints are selected on
    ``neg_elbo``, which the trained prior lowers.
    """

    score = "neg_elbo"
    reported = ("recon", "commitment", "prior_nll", "prior_bits_per_dim", "neg_elbo", "usage", "perplexity")
    summary = ("recon", "prior_bits_per_dim", "usage", "perplexity")
    score_label = "recon + prior NLL"

    def check_config(self, config: Any) -> None:
        start, epochs = config.model.vq.prior_start_epoch, config.train.epochs
        if start >= epochs:
            raise ConfigError(f"model.vq.prior_start_epoch ({start}) must be < train.epochs ({epochs}): the epochs "
                              "from it on train the prior that sample draws from; lower it or raise train.epochs")

    def build(self, model_config: Any, input_spec: dict[str, Any]) -> nn.Module:
        return build_vqvae(model_config, input_spec)

    def terms(self, model: nn.Module, inputs: Any, *, config: Any, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        bare = unwrap(model)
        out = model(inputs.x, inputs.labels if bare.num_classes else None)
        q = out.quantized
        with torch.autocast(device_type=out.z_e.device.type, enabled=False):
            z_e, z_q = out.z_e.float(), q.z_q.float()
            recon = -bare.decoder.log_prob(out.decoded.float(), inputs.target).mean()
            prior_nll = F.cross_entropy(out.prior_logits.float(), q.codes, reduction="none").flatten(1).sum(1).mean()
        with torch.no_grad():
            used = torch.bincount(q.codes.flatten(), minlength=bare.quantizer.num_codes) > 0
        return {
            "recon": recon,
            "codebook": (z_q - z_e.detach()).pow(2).flatten(1).sum(1).mean(),
            "commitment": (z_e - z_q.detach()).pow(2).flatten(1).sum(1).mean(),
            "prior_nll": prior_nll,
            "prior_bits_per_dim": prior_nll.detach() / (bare.decoder.dims * math.log(2.0)),
            "neg_elbo": recon.detach() + prior_nll.detach(),
            "usage": used.float().mean(),
            "perplexity": perplexity(q.codes, bare.quantizer.num_codes),
        }

    def objective(self, config: Any, epoch: float | None) -> Objective:
        vq = config.model.vq
        prior_phase = epoch is not None and epoch >= vq.prior_start_epoch
        vqvae_on = 0.0 if prior_phase else 1.0
        prior_on = 1.0 if epoch is None or prior_phase else 0.0
        return Objective(
            weights={"vqvae": {"recon": vqvae_on, "codebook": 0.0 if vq.ema else vqvae_on, "commitment": vq.beta * vqvae_on},
                     "prior": {"prior_nll": prior_on}},
            values={"prior_phase": float(prior_phase)})

    def optimizers(self, model: nn.Module, train_config: Any) -> list[FamilyOptimizer]:
        """``vqvae``: Adam over the encoder, decoder and (without EMA) codebook, whose every step
        also updates the codebook (``VectorQuantizer.update``); ``prior``: Adam over the prior."""
        adam = lambda params: torch.optim.Adam(params, lr=train_config.lr, weight_decay=train_config.weight_decay)  # noqa: E731
        vqvae = adam([p for name, p in model.named_parameters() if not name.startswith("prior.") and p.requires_grad])
        vqvae.register_step_post_hook(lambda *_: model.quantizer.update())
        return [FamilyOptimizer("vqvae", vqvae), FamilyOptimizer("prior", adam(model.prior.parameters()))]

    # --- inference -----------------------------------------------------------------------------------

    def codes(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The code indices of images, flattened in raster order. Shapes: (N, C, H, W) → (N, h·w) long."""
        return model.quantizer(model.encoder(x)).codes.flatten(1)

    def encode(self, model: nn.Module, x: Any, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The vectors of the nearest codes, flattened (channel-major, as ``decode`` reads them).

        Shapes: (N, C, H, W) → (N, latent_dim = D·h·w)."""
        return model.quantizer(model.encoder(x)).z_q.flatten(1)

    def decode(self, model: nn.Module, z: torch.Tensor, labels: torch.Tensor | None = None, *, mean: bool = True,
               generator: torch.Generator | None = None) -> Any:
        """Decode a flattened grid of code vectors as it is (interpolations between codes decode too).

        Shapes: z (N, D·h·w) → images (N, C, H, W)."""
        out = model.decoder(z.view(-1, model.code_dim, *model.grid))  # (N, D·h·w) → (N, D, h, w)
        return model.decoder.generate(out, generator, mean=mean)

    @torch.no_grad()
    def sample(self, model: nn.Module, n: int, *, labels: torch.Tensor | None = None, temperature: float = 1.0,
               generator: torch.Generator | None = None, mean: bool = True) -> Any:
        """Codes from the prior (softmax temperature ``temperature``), decoded."""
        codes = model.prior.sample(n, model.grid, labels=model.labels_for_prior(labels), temperature=temperature,
                                   generator=generator)
        return model.decoder.generate(model.decoder(model.quantizer.lookup(codes)), generator, mean=mean)

    @torch.no_grad()
    def log_likelihood(self, model: nn.Module, inputs: Any, *, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """The ELBO log p(x | z_q) + log p(codes): a lower bound on log p(x), exact to compute (the
        encoder is deterministic, so ``k`` samples would all be the same and ``k`` is not used).

        Shapes:
            → (N,), in nats.
        """
        out = model(inputs.x, inputs.labels if model.num_classes else None)
        log_prior = -F.cross_entropy(out.prior_logits.float(), out.quantized.codes, reduction="none").flatten(1).sum(1)
        return model.decoder.log_prob(out.decoded.float(), inputs.target) + log_prior
