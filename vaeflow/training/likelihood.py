"""Likelihood estimates over a data set, from the model's family (the VAE's: the IWAE bound)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from vaeflow.config import DataConfig
from vaeflow.modalities.base import ModalityData
from vaeflow.models.families import family_of
from vaeflow.training.loop import to_device


@torch.no_grad()
def iwae_nll(
    model: nn.Module,
    loader: Iterable[Any],
    modality: ModalityData,
    data_config: DataConfig,
    *,
    k: int,
    device: torch.device,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Per-example −log p(x), estimated by the family's ``log_likelihood`` with k samples (for the
    VAE the IWAE bound, Burda et al. 2016).

    Shapes:
        returns (N,) over all examples of ``loader``, in nats.
    """
    model.eval()
    family = family_of(model)
    out = []
    for batch in tqdm(loader, desc=f"IWAE k={k}", disable=not progress):
        inputs = modality.model_inputs(to_device(batch, device), data_config, train=False, generator=generator)
        out.append(-family.log_likelihood(model, inputs, k=k, generator=generator))
    return torch.cat(out)
