"""Checkpoint files: state dicts, the resolved config and the training history, loaded with weights_only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vaeflow.config import ExperimentConfig, from_dict
from vaeflow.models.vae import VAE, build_model

FILENAME = "checkpoint.pt"


def save(path: str | Path, **state: Any) -> None:
    """Write a checkpoint; every value must be a tensor, a state dict or plain data (weights_only-safe)."""
    torch.save(state, path)


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint without unpickling arbitrary objects."""
    path = Path(path)
    if path.is_dir():
        path = path / FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; run the train stage first (dvc repro train@image)")
    return torch.load(path, map_location=map_location, weights_only=True)


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[VAE, ExperimentConfig, dict[str, Any]]:
    """Rebuild the model from a checkpoint's config and input spec, then load its weights."""
    state = load(path, map_location)
    config = from_dict(ExperimentConfig, state["config"])
    model = build_model(config.model, state["input_spec"])
    model.load_state_dict(state["model"])
    model.eval()
    return model, config, state
