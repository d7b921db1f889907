"""The VRNN family: a latent variable at every time step (Chung et al. 2015, https://arxiv.org/abs/1506.02216).

Unlike the whole-window VAEs, the prior p(z_t | h_{t−1}) is learned and moves with the recurrence, so
the KL compares two learned Gaussians at every step; generation rolls the prior forward for any
number of steps, and the likelihood factorises per step, which gives per-step anomaly scores.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import torch
from torch import nn

from vaeflow import registry
from vaeflow.config import ConfigError
from vaeflow.losses import free_bits_kl, iwae_log_likelihood
from vaeflow.models.decoders.sequence_gaussian import SequenceGaussian
from vaeflow.models.distributions import DiagonalGaussian
from vaeflow.models.families.base import Family, unwrap
from vaeflow.models.families.vae import VAEFamily
from vaeflow.models.outputs import DecoderOutput
from vaeflow.models.vae import COND_DIM


def gaussian_kl(q: DiagonalGaussian, p: DiagonalGaussian) -> torch.Tensor:
    """KL(q ‖ p) between two diagonal Gaussians, per dimension, in closed form.

    Shapes:
        q, p: parameters broadcastable to each other, (..., D) → (..., D)
    """
    return 0.5 * (p.logvar - q.logvar + (q.logvar.exp() + (q.mu - p.mu).pow(2)) / p.logvar.exp() - 1.0)


def observed_steps(target: torch.Tensor) -> torch.Tensor:
    """The steps of each series that are data, not padding (padding is NaN in every channel).

    Shapes:
        target: (N, T, C) → (N, T) bool
    """
    return torch.isfinite(target).any(-1)


@dataclasses.dataclass
class VRNNOutput:
    """One pass over a batch of series.

    Attributes:
        prior: p(z_t | h_{t−1}), parameters (N, T, D).
        posterior: q(z_t | x_t, h_{t−1}), parameters (N, T, D); None when generating (no x to see).
        z: the latent path used, (N, T, D).
        decoded: the decoder's p(x_t | z_t, h_{t−1}): means (N, T, C) and the shared log σ (1, 1, C).
    """

    prior: DiagonalGaussian
    posterior: DiagonalGaussian | None
    z: torch.Tensor
    decoded: DecoderOutput


def _mlp(inputs: int, width: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, width), nn.ReLU(), nn.Linear(width, outputs))


class VRNN(nn.Module):
    """Variational RNN (Chung et al. 2015) with a GRU recurrence h_t = GRU([φx(x_t), φz(z_t)], h_{t−1}).

    Args:
        channels: C.
        latent_dim: D, the size of z_t at each step.
        hidden: size of the GRU state h_t.
        feature: width of the feature extractors φx, φz and of the hidden layer of the prior,
            posterior and decoder networks.
        num_classes: classes of a class-conditional VRNN (the label sets h_0); 0 for none.
        scale_init: initial σ of the Gaussian likelihood (see ``SequenceGaussian``).

    Shapes:
        x: (N, T, C) scaled units, padding as 0 → ``VRNNOutput`` with (N, T, ·) tensors
    """

    def __init__(self, *, channels: int, latent_dim: int, hidden: int, feature: int, num_classes: int = 0,
                 scale_init: float = 0.1):
        super().__init__()
        self.latent_dim, self.num_classes, self.condition_dim, self.hidden = latent_dim, num_classes, 0, hidden
        self.phi_x = nn.Sequential(nn.Linear(channels, feature), nn.ReLU())
        self.phi_z = nn.Sequential(nn.Linear(latent_dim, feature), nn.ReLU())
        self.prior_net = _mlp(hidden, feature, 2 * latent_dim)
        self.posterior_net = _mlp(feature + hidden, feature, 2 * latent_dim)
        self.emission = _mlp(feature + hidden, feature, channels)
        self.cell = nn.GRUCell(2 * feature, hidden)
        # The likelihood the sequence decoders use: learned per-channel σ, NaN targets masked.
        self.likelihood = SequenceGaussian(channels, scale_init)
        self.embed = nn.Embedding(num_classes, COND_DIM) if num_classes else None
        self.initial_state = nn.Linear(COND_DIM, hidden) if num_classes else None
        self.reset_parameters()

    @property
    def conditional(self) -> bool:
        return self.embed is not None

    def reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.GRUCell, nn.Embedding)):
                module.reset_parameters()
        self.likelihood.reset_likelihood()
        # Start the prior and posterior heads near N(0, I), so that early KL terms stay moderate.
        for net in (self.prior_net, self.posterior_net):
            nn.init.zeros_(net[-1].bias)
            net[-1].weight.data.mul_(0.1)

    def h0(self, n: int, labels: torch.Tensor | None, device: torch.device) -> torch.Tensor:
        """The initial state: zeros, or a function of the label for a conditional VRNN. Shapes: → (N, H)."""
        if self.embed is None:
            return torch.zeros(n, self.hidden, device=device)
        if labels is None:
            raise ValueError("this VRNN is conditional: pass class labels (labels=...)")
        return torch.tanh(self.initial_state(self.embed(labels)))

    @staticmethod
    def _gaussian(params: torch.Tensor) -> DiagonalGaussian:
        mu, logvar = params.chunk(2, dim=-1)  # (N, 2D) → 2 × (N, D)
        return DiagonalGaussian(mu, logvar.clamp(-12.0, 8.0))

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None, *, generator: torch.Generator | None = None,
                sample: bool = True) -> VRNNOutput:
        """Filter the series: at each step the posterior sees x_t and h_{t−1}; z_t is drawn from it
        (``sample``) or set to its mean, and the recurrence reads the observed x_t (teacher forcing)."""
        h = self.h0(x.shape[0], labels, x.device)
        steps = []
        for t in range(x.shape[1]):
            fx = self.phi_x(x[:, t])
            prior = self._gaussian(self.prior_net(h))
            posterior = self._gaussian(self.posterior_net(torch.cat([fx, h], -1)))
            z = posterior.rsample(generator) if sample else posterior.mu
            fz = self.phi_z(z)
            mean = self.emission(torch.cat([fz, h], -1))
            h = self.cell(torch.cat([fx, fz], -1), h)
            steps.append((prior.mu, prior.logvar, posterior.mu, posterior.logvar, z, mean))
        p_mu, p_lv, q_mu, q_lv, z, mean = (torch.stack(s, 1) for s in zip(*steps))  # each T × (N, ·) → (N, T, ·)
        return VRNNOutput(DiagonalGaussian(p_mu, p_lv), DiagonalGaussian(q_mu, q_lv), z, self.likelihood.output(mean))

    @torch.no_grad()
    def generate(self, n: int, length: int, *, labels: torch.Tensor | None = None, z: torch.Tensor | None = None,
                 temperature: float = 1.0, mean: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
        """Roll the model forward for ``length`` steps: z_t from the prior (σ scaled by ``temperature``)
        or from ``z``, x_t the decoder's mean (``mean``) or a draw from it; the recurrence reads that x_t.

        Shapes:
            z: (n, length, D) or None → (n, length, C), scaled units
        """
        device = next(self.parameters()).device
        h = self.h0(n, labels, device)
        out = []
        for t in range(length):
            if z is None:
                prior = self._gaussian(self.prior_net(h))
                eps = torch.randn(prior.mu.shape, generator=generator, device=device)
                z_t = prior.mu + temperature * prior.std * eps
            else:
                z_t = z[:, t]
            fz = self.phi_z(z_t)
            step = self.likelihood.output(self.emission(torch.cat([fz, h], -1)).unsqueeze(1))  # (n, C) → (n, 1, C)
            x_t = self.likelihood.generate(step, generator, mean=mean).squeeze(1)
            h = self.cell(torch.cat([self.phi_x(x_t), fz], -1), h)
            out.append(x_t)
        return torch.stack(out, 1)  # T × (n, C) → (n, T, C)


def step_log_prob(model: VRNN, out: VRNNOutput, target: torch.Tensor) -> torch.Tensor:
    """log p(x_t | z_t, h_{t−1}) per step, summed over observed channels (padding scores 0), in fp32.

    Shapes:
        out.decoded.params: (N, T, C); target: (N, T, C), NaN where padded → (N, T)
    """
    per_step = DecoderOutput(out.decoded.params.float().unsqueeze(-2), out.decoded.scale.float())  # (N, T, 1, C)
    return model.likelihood.log_prob(per_step, target.unsqueeze(-2))  # each step its own "series" of length 1


@registry.FAMILIES.register("vrnn")
class VRNNFamily(Family):
    """VRNN (Chung et al. 2015) for the time-series modality; sizes from ``model.vrnn``, z_t of size
    ``model.latent_dim``.

    Terms (batch means, nats per series): ``recon`` = −Σ_t log p(x_t | z_t, h_{t−1}), ``kl`` =
    Σ_t KL(q(z_t | x_t, h_{t−1}) ‖ p(z_t | h_{t−1})), ``kl_objective`` = the KL with free bits per step
    and dimension (each (t, d)'s batch-mean KL counts as at least ``loss.free_bits``), ``neg_elbo`` =
    recon + kl. Padded steps are masked out of both sums. The objective is the VAE family's: recon +
    β · kl_objective with β warmed up (``loss.beta``, ``loss.warmup_epochs``).
    """

    score = "neg_elbo"
    reported = ("recon", "kl", "neg_elbo")
    summary = ("kl",)
    score_label = "−ELBO"
    uses_encoder_decoder = False
    any_length = True
    # The same β schedule (warm-up) and term weights as the VAE.
    objective = VAEFamily.objective
    # Largest number of series (k paths × N) filtered at once by the IWAE estimate.
    max_batch: ClassVar[int] = 8192

    def build(self, model_config: Any, input_spec: dict[str, Any]) -> nn.Module:
        if "length" not in input_spec or "scaler" not in input_spec:
            raise ConfigError("model.family vrnn models time series; use it with modality timeseries")
        num_classes = int(input_spec.get("num_classes", 0)) if model_config.conditional else 0
        if model_config.conditional and not num_classes:
            raise ConfigError("model.conditional is true but the data set has no class labels to condition on; "
                              "set it to false")
        v = model_config.vrnn
        return VRNN(channels=input_spec["channels"], latent_dim=model_config.latent_dim, hidden=v.hidden,
                    feature=v.feature, num_classes=num_classes, scale_init=v.scale_init)

    def _labels(self, model: nn.Module, labels: torch.Tensor | None) -> torch.Tensor | None:
        return labels if unwrap(model).conditional else None

    def step_terms(self, model: nn.Module, inputs: Any, *, generator: torch.Generator | None,
                   sample: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-step log-likelihood and KL of one filtering pass, padding zeroed, in fp32.

        Shapes:
            inputs.x, inputs.target: (N, T, C) → log p(x_t | ·): (N, T); KL: (N, T, D)
        """
        bare = unwrap(model)
        out = model(inputs.x, self._labels(model, inputs.labels), generator=generator, sample=sample)
        with torch.autocast(device_type=inputs.x.device.type, enabled=False):
            log_px = step_log_prob(bare, out, inputs.target)
            q = DiagonalGaussian(out.posterior.mu.float(), out.posterior.logvar.float())
            p = DiagonalGaussian(out.prior.mu.float(), out.prior.logvar.float())
            kl = gaussian_kl(q, p) * observed_steps(inputs.target).unsqueeze(-1)  # (N, T, D)
        return log_px, kl

    def terms(self, model: nn.Module, inputs: Any, *, config: Any, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        log_px, kl = self.step_terms(model, inputs, generator=generator)
        recon = -log_px.sum(1).mean()
        kl_steps = kl.mean(0)  # (N, T, D) → (T, D): batch-mean KL per step and dimension
        total = kl_steps.sum()
        return {"recon": recon, "kl": total, "kl_objective": free_bits_kl(kl_steps.flatten(), config.loss.free_bits),
                "neg_elbo": recon + total}

    @torch.no_grad()
    def sample(self, model: nn.Module, n: int, *, labels: torch.Tensor | None = None, temperature: float = 1.0,
               generator: torch.Generator | None = None, mean: bool = True, length: int | None = None) -> torch.Tensor:
        """``n`` series of ``length`` steps (default: the training window), rolled forward from the prior.

        Shapes:
            → (n, length, C), scaled units
        """
        length = length or model.input_spec["length"]
        return model.generate(n, length, labels=self._labels(model, labels), temperature=temperature, mean=mean,
                              generator=generator)

    @torch.no_grad()
    def encode(self, model: nn.Module, x: Any, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Per-step posterior means along the deterministic path (z_t set to each posterior's mean).

        Shapes:
            x: (N, T, C) → (N, T, latent_dim); the pyfunc model returns this 3-D array as it is.
        """
        return model(x, self._labels(model, labels), sample=False).posterior.mu

    @torch.no_grad()
    def decode(self, model: nn.Module, z: torch.Tensor, labels: torch.Tensor | None = None, *, mean: bool = True,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """The series generated along the latent path ``z``. Shapes: z (N, T, D) → (N, T, C)."""
        return model.generate(z.shape[0], z.shape[1], labels=self._labels(model, labels), z=z, mean=mean,
                              generator=generator)

    @torch.no_grad()
    def reconstruct(self, model: nn.Module, x: Any, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The decoder's means along the posterior-mean path, the recurrence reading the observed x_t
        (decode(encode(x)) would feed back its own outputs instead). Shapes: (N, T, C) → (N, T, C)."""
        return model(x, self._labels(model, labels), sample=False).decoded.params

    def _paths(self, model: nn.Module, inputs: Any, k: int) -> list[tuple[Any, int]]:
        """``inputs`` repeated for chunks of the k paths (at most ``max_batch`` series a pass)."""
        n = inputs.x.shape[0]
        chunk = max(1, self.max_batch // n)
        out = []
        for start in range(0, k, chunk):
            kc = min(chunk, k - start)
            rep = lambda t: None if t is None else t.repeat(kc, *([1] * (t.dim() - 1)))  # noqa: E731  (N, …) → (kc·N, …)
            out.append((type(inputs)(x=rep(inputs.x), target=rep(inputs.target), labels=rep(inputs.labels)), kc))
        return out

    @torch.no_grad()
    def log_likelihood(self, model: nn.Module, inputs: Any, *, k: int,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """IWAE estimate of log p(x_{1:T}) over whole sequences (Burda et al. 2016): k latent paths
        z_{1:T} ~ q, log-mean-exp of log p(x, z) − log q(z | x), observed steps only.

        Shapes:
            inputs.x: (N, T, C) → (N,), in nats.
        """
        n = inputs.x.shape[0]
        parts = []
        for rep, kc in self._paths(model, inputs, k):
            out = model(rep.x, self._labels(model, rep.labels), generator=generator)
            mask = observed_steps(rep.target)  # (kc·N, T)
            log_px = step_log_prob(model, out, rep.target).sum(1)
            log_pz = (out.prior.log_prob(out.z) * mask).sum(1)
            log_qz = (out.posterior.log_prob(out.z) * mask).sum(1)
            parts.append(torch.stack([log_px, log_pz, log_qz]).view(3, kc, n))  # (3, kc·N) → (3, kc, N)
        log_px, log_pz, log_qz = torch.cat(parts, 1)  # each (k, N)
        return iwae_log_likelihood(log_px, log_pz, log_qz)

    @torch.no_grad()
    def anomaly_scores(self, model: nn.Module, inputs: Any, *, k: int,
                       generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Scores from k latent paths drawn from the posterior (z_t ~ q(z_t | x_t, h_{t−1}), the
        recurrence reading the observed series), averaged over the paths:

        - ``recon_prob_steps``: −(1/k) Σ_k log p(x_t | z_≤t, x_<t) per step (NaN at padding);
        - ``recon_prob``: its sum over the observed steps;
        - ``neg_elbo``: recon_prob + (1/k) Σ_k Σ_t KL(q_t ‖ p_t), the −ELBO of the series.

        Shapes:
            inputs.x: (N, T, C) → recon_prob_steps (N, T); recon_prob, neg_elbo (N,), in nats.
        """
        n = inputs.x.shape[0]
        log_px, kl = [], []
        for rep, kc in self._paths(model, inputs, k):
            lp, kl_steps = self.step_terms(model, rep, generator=generator)
            log_px.append(lp.view(kc, n, -1))  # (kc·N, T) → (kc, N, T)
            kl.append(kl_steps.sum((1, 2)).view(kc, n))
        steps = -torch.cat(log_px).mean(0)  # (k, N, T) → (N, T)
        recon = steps.sum(1)
        steps = steps.masked_fill(~observed_steps(inputs.target), math.nan)
        return {"recon_prob_steps": steps, "recon_prob": recon, "neg_elbo": recon + torch.cat(kl).mean(0)}
