"""The VAE: encoder → reparameterised z → decoder. No loss in ``forward`` (see ``vaeflow.losses``)."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from vaeflow import registry
from vaeflow.config import ModelConfig
from vaeflow.models.distributions import DiagonalGaussian
from vaeflow.models.outputs import DecoderOutput, VAEOutput

# Size of the learned embedding of a conditional VAE's condition (class label or property vector).
COND_DIM = 16


class VAE(nn.Module):
    """Variational autoencoder (Kingma & Welling 2014, https://arxiv.org/abs/1312.6114).

    Args:
        encoder: maps (x, cond) to an ``EncoderOutput``.
        decoder: maps (z, cond) to a ``DecoderOutput`` and owns ``log_prob`` / ``generate``.
        latent_dim: size of z.
        num_classes: classes of a class-conditional VAE (Sohn et al. 2015); 0 for none.
        condition_dim: size of a continuous condition (e.g. standardised molecular properties)
            of a property-conditional VAE; 0 for none. At most one of the two is set.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, *, latent_dim: int, num_classes: int = 0,
                 condition_dim: int = 0):
        super().__init__()
        if num_classes and condition_dim:
            raise ValueError("a VAE is conditional on class labels or on a continuous vector, not both")
        self.encoder = encoder
        self.decoder = decoder
        self.latent_dim = latent_dim
        self.num_classes = num_classes
        self.condition_dim = condition_dim
        self.embed: nn.Module | None = None
        if num_classes:
            self.embed = nn.Embedding(num_classes, COND_DIM)
        elif condition_dim:
            self.embed = nn.Linear(condition_dim, COND_DIM)

    @property
    def conditional(self) -> bool:
        return self.embed is not None

    def condition(self, labels: torch.Tensor | None) -> torch.Tensor | None:
        """Embedding of the condition for a conditional model, None otherwise.

        Shapes: class labels (N,) long, or a continuous condition (N, condition_dim) → (N, COND_DIM).
        """
        if self.embed is None:
            return None
        if labels is None:
            what = "class labels" if self.num_classes else f"a ({self.condition_dim},) condition vector per example"
            raise ValueError(f"this VAE is conditional: pass {what} (labels=...)")
        return self.embed(labels)

    def encode(self, x: Any, labels: torch.Tensor | None = None) -> DiagonalGaussian:
        out = self.encoder(x, self.condition(labels))
        return DiagonalGaussian(out.mu, out.logvar)

    def decode(self, z: torch.Tensor, labels: torch.Tensor | None = None, target: Any = None) -> DecoderOutput:
        """Decode z; leading sample dimensions (k, N, D) are folded into the batch and restored.

        A target (for a teacher-forced decoder) is expanded along the same sample dimensions.
        """
        lead = z.shape[:-1]
        cond = self.condition(labels)
        if z.dim() > 2:
            z = z.reshape(-1, z.shape[-1])  # (k, N, D) → (k*N, D)
            if cond is not None:
                cond = cond.expand(*lead, cond.shape[-1]).reshape(-1, cond.shape[-1])
            target = expand_leading(target, lead)
        out = self.decoder(z, cond, target)
        if len(lead) > 1:
            unfold = lambda t: None if t is None else t.reshape(*lead, *t.shape[1:])  # noqa: E731
            # A scale per example (e.g. per pixel) unfolds too; a shared one, (1, …), broadcasts as it is.
            scale = unfold(out.scale) if out.scale is not None and out.scale.shape[0] == z.shape[0] else out.scale
            out = DecoderOutput(params=unfold(out.params), scale=scale, aux=unfold(out.aux))
        return out

    def forward(
        self, x: Any, labels: torch.Tensor | None = None, *, target: Any = None, generator: torch.Generator | None = None
    ) -> VAEOutput:
        posterior = self.encode(x, labels)
        z = posterior.rsample(generator)
        return VAEOutput(posterior=posterior, z=z, decoded=self.decode(z, labels, target))

    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        labels: torch.Tensor | None = None,
        temperature: float = 1.0,
        mean: bool = True,
    ) -> Any:
        """Draw z ~ N(0, temperature² I) and decode with the decoder's ``generate``."""
        device = next(self.parameters()).device
        z = temperature * torch.randn(n, self.latent_dim, generator=generator, device=device)
        return self.decoder.generate(self.decode(z, labels), generator, mean=mean)


def expand_leading(target: Any, lead: tuple[int, ...]) -> Any:
    """Repeat a per-example target along leading sample dimensions and fold them into the batch.

    Tensors, and tensors inside dataclasses, tuples and lists, are handled; None stays None.

    Shapes:
        (N, ...) with lead = (k, N) → (k*N, ...)
    """
    if target is None:
        return None
    if isinstance(target, torch.Tensor):
        return target.expand(*lead[:-1], *target.shape).reshape(-1, *target.shape[1:])  # (k, N, …) → (k*N, …)
    if dataclasses.is_dataclass(target):
        return dataclasses.replace(target, **{f.name: expand_leading(getattr(target, f.name), lead)
                                             for f in dataclasses.fields(target)})
    if isinstance(target, (list, tuple)):
        return type(target)(expand_leading(t, lead) for t in target)
    return target


def build_model(config: ModelConfig, input_spec: dict[str, Any]) -> VAE:
    """Build a VAE from its config and the data's input spec (the only place that reads a ModelConfig)."""
    # Class labels when the data set has them, else a continuous condition (molecular properties).
    num_classes = int(input_spec.get("num_classes", 0)) if config.conditional else 0
    condition_dim = int(input_spec.get("condition_dim", 0)) if config.conditional and not num_classes else 0
    if config.conditional and not (num_classes or condition_dim):
        raise ValueError("model.conditional is true but the data set has no class labels or properties to "
                         "condition on; set it to false")
    cond_dim = COND_DIM if config.conditional else 0
    derived = {"input_spec": input_spec, "latent_dim": config.latent_dim, "cond_dim": cond_dim}
    encoder = registry.build(registry.ENCODERS, config.encoder, **derived)
    decoder = registry.build(registry.DECODERS, config.decoder, **derived)
    model = VAE(encoder, decoder, latent_dim=config.latent_dim, num_classes=num_classes, condition_dim=condition_dim)
    # Kept for inference (e.g. mapping samples back to real units); not part of the state dict.
    model.input_spec = dict(input_spec)
    # The family whose verbs (vaeflow.models.families.family_of) serve this model.
    model.family_name = "vae"
    return model
