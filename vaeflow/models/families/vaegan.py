"""The VAE-GAN family (Larsen et al. 2016, https://arxiv.org/abs/1512.09300): a VAE whose
reconstruction is measured in a discriminator's feature space, trained with three optimizers."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vaeflow import registry
from vaeflow.config import ConfigError, VAEGANConfig
from vaeflow.losses import beta_at, free_bits_kl
from vaeflow.models.families.base import Family, FamilyOptimizer, Objective, unwrap
from vaeflow.models.families.vae import VAEFamily
from vaeflow.models.outputs import DecoderOutput
from vaeflow.models.vae import VAE
from vaeflow.models.vae import build_model as build_vae

# GAN optimizers conventionally use a short momentum memory (Radford et al. 2016): with β1 = 0.9
# the generator and discriminator chase each other's stale gradients.
ADAM_BETAS = (0.5, 0.999)


@dataclasses.dataclass
class DiscriminatorOutput:
    """One discriminator pass. Shapes: logits (N,) (> 0: judged real); features (N, F), Dis_l(x) flattened."""

    logits: torch.Tensor
    features: torch.Tensor


class Discriminator(nn.Module):
    """Conv blocks (k=4, s=2, p=1, LeakyReLU 0.2; no batch norm, whose statistics would mix real and
    fake batches and need syncing under DDP) → one linear logit; block ``feature_layer``'s output is Dis_l.

    Args:
        channels, height, width: the image shape.
        base_width: channels of the first block; each further block doubles them.
        layers: the number of blocks, each halving height and width.
        feature_layer: the 1-based block whose output is returned as ``features``.

    Shapes:
        x: (N, C, H, W) in [0, 1] → logits (N,), features (N, F)
    """

    def __init__(self, *, channels: int, height: int, width: int, base_width: int, layers: int, feature_layer: int):
        super().__init__()
        blocks, c, h, w = [], channels, height, width
        for i in range(layers):
            blocks.append(nn.Sequential(nn.Conv2d(c, base_width * 2**i, kernel_size=4, stride=2, padding=1),
                                        nn.LeakyReLU(0.2)))
            c, h, w = base_width * 2**i, h // 2, w // 2
        if h < 1 or w < 1:
            raise ConfigError(f"model.vaegan.layers: {layers} halvings leave nothing of a {height}x{width} image; "
                              "use fewer layers")
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Linear(c * h * w, 1)
        self.feature_layer = feature_layer
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.reset_parameters()

    def forward(self, x: torch.Tensor) -> DiscriminatorOutput:
        features = None
        for i, block in enumerate(self.blocks, start=1):
            x = block(x)
            if i == self.feature_layer:
                features = x.flatten(1)  # (N, c, h, w) → (N, c·h·w)
        return DiscriminatorOutput(logits=self.head(x.flatten(1)).squeeze(-1), features=features)


@dataclasses.dataclass
class VAEGANOutput:
    """One forward pass: the VAE's posterior, z and reconstruction, a decode of prior draws z_p, and the
    discriminator on the real images, the reconstructions and the prior samples."""

    posterior: Any  # DiagonalGaussian
    z: torch.Tensor
    decoded: DecoderOutput
    real: DiscriminatorOutput
    recon: DiscriminatorOutput
    prior: DiscriminatorOutput


class VAEGAN(VAE):
    """A VAE (encoder, decoder, optional class condition) plus a discriminator.

    Everything one training step needs comes from one ``forward``, so DDP sees one forward per step
    and each parameter receives its gradient once (from its own optimizer's loss).

    Args:
        discriminator: judges images in [0, 1]; its ``features`` define the reconstruction space.
        discriminator_lr: the discriminator's learning rate (None: the training lr); read by the
            family's ``optimizers``, which only see the training config.
        (the rest as for ``VAE``)
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, discriminator: Discriminator, *, latent_dim: int,
                 num_classes: int = 0, condition_dim: int = 0, discriminator_lr: float | None = None):
        super().__init__(encoder, decoder, latent_dim=latent_dim, num_classes=num_classes, condition_dim=condition_dim)
        self.discriminator = discriminator
        self.discriminator_lr = discriminator_lr

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None, *,
                generator: torch.Generator | None = None) -> VAEGANOutput:
        """Shapes: x (N, C, H, W) in [0, 1], labels (N,) for a class-conditional model."""
        posterior = self.encode(x, labels)
        z = posterior.rsample(generator)
        decoded = self.decode(z, labels)
        z_prior = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        prior_images = self.decoder.mean(self.decode(z_prior, labels))
        return VAEGANOutput(posterior=posterior, z=z, decoded=decoded, real=self.discriminator(x),
                            recon=self.discriminator(self.decoder.mean(decoded)), prior=self.discriminator(prior_images))


def disc_accuracy(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The discriminator's accuracy on real images (logit > 0) and on fakes (logit < 0).

    Near 1 on both: the discriminator wins and the decoder does not fool it; fake accuracy near 0:
    the decoder fools it (or the discriminator has collapsed). Shapes: (N,), (M,) → two scalars in [0, 1].
    """
    return (real_logits > 0).float().mean(), (fake_logits < 0).float().mean()


def gan_losses(real: torch.Tensor, fakes: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The discriminator's loss, −[log D(x) + Σ_fakes log(1 − D(x̃))], and the decoder's, in the
    non-saturating form −Σ_fakes log D(x̃) (Goodfellow et al. 2014: the paper's −L_GAN with gradients
    that do not vanish while the discriminator wins). From logits, with BCE-with-logits for stability.

    Shapes: real (N,), each fake (N,) → two scalars (batch means, summed over the fake sources).
    """
    bce = F.binary_cross_entropy_with_logits
    disc = bce(real, torch.ones_like(real)) + sum(bce(f, torch.zeros_like(f)) for f in fakes)
    dec = sum(bce(f, torch.ones_like(f)) for f in fakes)
    return disc, dec


@registry.FAMILIES.register("vaegan")
class VAEGANFamily(VAEFamily):
    """VAE-GAN (Larsen et al. 2016): the reconstruction is a Gaussian in the feature space Dis_l of a
    discriminator trained against reconstructions and prior samples; images only.

    Terms (batch means): ``recon`` = pixel −log p(x | z) (nats; the checkpoint score, since it does not
    move with the discriminator), ``kl`` and ``kl_objective`` (as in the VAE), ``feature_recon`` =
    ½‖Dis_l(x) − Dis_l(x̃)‖², ``gan_discriminator`` and ``gan_decoder`` (``gan_losses``), and
    ``disc_acc_real`` / ``disc_acc_fake`` (``disc_accuracy``, fakes = reconstructions and prior samples).

    The paper's loss assignment, one optimizer each: encoder ← β·KL + feature_recon; decoder ←
    γ·feature_recon + gan_decoder; discriminator ← gan_discriminator; the encoder and decoder also get
    ``pixel_weight``·recon. The loop back-propagates each loss into its own optimizer's parameters only,
    so the discriminator never learns from the reconstruction and its loss never trains the decoder.

    There is no likelihood (the feature-space Gaussian is not a density of x), so the evaluate stage
    reports no IWAE NLL and the family has no anomaly scores; sample / encode / decode are the VAE's.
    """

    score = "recon"
    reported = ("recon", "kl", "feature_recon", "gan_decoder", "gan_discriminator", "disc_acc_real", "disc_acc_fake")
    summary = ("disc_acc_real", "disc_acc_fake", "kl")
    score_label = "pixel recon"
    # The VAE's IWAE bound and anomaly scores would score the pixel decoder this family does not train for.
    log_likelihood = Family.log_likelihood
    anomaly_scores = Family.anomaly_scores

    def build(self, model_config: Any, input_spec: dict[str, Any]) -> nn.Module:
        if "channels" not in input_spec:
            raise ConfigError("model.family vaegan is for images (its discriminator is a conv net); use modality image")
        vae = build_vae(model_config, input_spec)
        opts: VAEGANConfig = model_config.vaegan
        disc = Discriminator(channels=input_spec["channels"], height=input_spec["height"], width=input_spec["width"],
                             base_width=opts.width, layers=opts.layers, feature_layer=opts.feature_layer)
        return VAEGAN(vae.encoder, vae.decoder, disc, latent_dim=vae.latent_dim, num_classes=vae.num_classes,
                      condition_dim=vae.condition_dim, discriminator_lr=opts.discriminator_lr)

    def terms(self, model: nn.Module, inputs: Any, *, config: Any, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        bare = unwrap(model)
        out: VAEGANOutput = model(inputs.x, inputs.labels if bare.conditional else None, generator=generator)
        with torch.autocast(device_type=out.z.device.type, enabled=False):
            recon = -bare.decoder.log_prob(out.decoded.float(), inputs.target).mean()
            kl_dims = out.posterior.kl_standard_normal().float().mean(0)  # (N, D) → (D,)
            real, fake_recon, fake_prior = out.real.logits.float(), out.recon.logits.float(), out.prior.logits.float()
            gan_disc, gan_dec = gan_losses(real, [fake_recon, fake_prior])
            feature_recon = 0.5 * (out.recon.features.float() - out.real.features.float()).pow(2).sum(1).mean()
            acc_real, acc_fake = disc_accuracy(real, torch.cat([fake_recon, fake_prior]))
        return {"recon": recon, "kl": kl_dims.sum(), "kl_objective": free_bits_kl(kl_dims, config.loss.free_bits),
                "feature_recon": feature_recon, "gan_decoder": gan_dec, "gan_discriminator": gan_disc,
                "disc_acc_real": acc_real, "disc_acc_fake": acc_fake}

    def objective(self, config: Any, epoch: float | None) -> Objective:
        loss, opts = config.loss, config.model.vaegan
        beta = loss.beta if epoch is None else beta_at(epoch, beta=loss.beta, warmup_epochs=loss.warmup_epochs)
        # recon stays in both losses at weight 0 too: every parameter then gets a gradient each step,
        # which DDP requires (e.g. a Gaussian decoder's scale is reached through recon alone).
        return Objective(weights={
            "encoder": {"kl_objective": beta, "feature_recon": 1.0, "recon": opts.pixel_weight},
            "decoder": {"feature_recon": opts.gamma, "gan_decoder": 1.0, "recon": opts.pixel_weight},
            "discriminator": {"gan_discriminator": 1.0},
        }, values={"beta": beta})

    def optimizers(self, model: nn.Module, train_config: Any) -> list[FamilyOptimizer]:
        """Adam for the encoder (with the condition embedding), the decoder and the discriminator."""
        groups = {"encoder": [model.encoder, *([model.embed] if model.embed is not None else [])],
                  "decoder": [model.decoder], "discriminator": [model.discriminator]}
        out = []
        for name, modules in groups.items():
            lr = (model.discriminator_lr or train_config.lr) if name == "discriminator" else train_config.lr
            params = [p for m in modules for p in m.parameters()]
            out.append(FamilyOptimizer(name, torch.optim.Adam(params, lr=lr, betas=ADAM_BETAS,
                                                               weight_decay=train_config.weight_decay)))
        return out
