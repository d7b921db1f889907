"""Likelihood bounds for any VAE whose decoder has log_prob: the IWAE estimate of −log p(x)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from tqdm.auto import tqdm

from vaeflow.modalities.base import ModalityData
from vaeflow.config import DataConfig
from vaeflow.losses import iwae_log_likelihood
from vaeflow.models.distributions import standard_normal_log_prob
from vaeflow.models.vae import VAE
from vaeflow.training.loop import to_device


@torch.no_grad()
def iwae_nll(
    model: VAE,
    loader: Iterable[Any],
    modality: ModalityData,
    data_config: DataConfig,
    *,
    k: int,
    device: torch.device,
    generator: torch.Generator | None = None,
    max_decode: int = 8192,
    progress: bool = False,
) -> torch.Tensor:
    """Per-example −log p(x) estimated with k importance samples (Burda et al. 2016).

    The k samples are decoded in chunks of at most ``max_decode`` images at a time.

    Shapes:
        returns (N,) over all examples of ``loader``, in nats.
    """
    model.eval()
    out = []
    for batch in tqdm(loader, desc=f"IWAE k={k}", disable=not progress):
        inputs = modality.model_inputs(to_device(batch, device), data_config, train=False, generator=generator)
        labels = inputs.labels if model.conditional else None
        q = model.encode(inputs.x, labels)
        n = q.mu.shape[0]
        chunk = max(1, max_decode // n)
        parts = []
        for start in range(0, k, chunk):
            z = q.rsample(generator, k=min(chunk, k - start))  # (kc, N, D)
            log_px_z = model.decoder.log_prob(model.decode(z, labels, inputs.target), inputs.target)  # (kc, N)
            parts.append((log_px_z, standard_normal_log_prob(z), q.log_prob(z)))
        log_px_z, log_pz, log_qz = (torch.cat(p) for p in zip(*parts))  # each (k, N)
        out.append(-iwae_log_likelihood(log_px_z, log_pz, log_qz))
    return torch.cat(out)
