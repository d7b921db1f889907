"""Checkpoint files: state dicts, the resolved config and the training history, loaded with weights_only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from vaeflow.config import ExperimentConfig, from_dict
from vaeflow.models import families

FILENAME = "checkpoint.pt"


def save(path: str | Path, **state: Any) -> None:
    """Write a checkpoint; every value must be a tensor, a state dict or plain data (weights_only-safe)."""
    torch.save(state, path)


def _train_hint(path: Path, modality: str | None) -> str:
    """What to run to get the missing checkpoint: the train stage of the modality asked for, or the
    one the path names (``models/<modality>/model.pt``, the stages' layout)."""
    folder = path if path.suffix == "" else path.parent
    modality = modality or (folder.name if folder.parent.name == "models" else None)
    if modality:
        return f"run the train stage first (dvc repro train@{modality}, or vaeflow train --modality {modality})"
    return "run the train stage first (dvc repro train@<modality>), or pass the path of a trained model.pt"


def load(path: str | Path, map_location: str | torch.device = "cpu", *, modality: str | None = None) -> dict[str, Any]:
    """Read a checkpoint without unpickling arbitrary objects.

    Raises:
        FileNotFoundError: no checkpoint there; the message names the train stage to run (of
            ``modality``, or of the modality the path names).
    """
    path = Path(path)
    if path.is_dir():
        path = path / FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; {_train_hint(path, modality)}")
    return torch.load(path, map_location=map_location, weights_only=True)


def load_model(path: str | Path, device: str | torch.device = "cpu", *,
               modality: str | None = None) -> tuple[nn.Module, ExperimentConfig, dict[str, Any]]:
    """Rebuild the model from a checkpoint's config and input spec, load its weights and put it on
    ``device`` (in eval mode): sampling and evaluation then draw and compute there."""
    state = load(path, device, modality=modality)
    model_config = state["config"].get("model", {})
    # A family registered outside vaeflow is found by importing the module that registered it.
    families.get(model_config.get("family", "vae"), state.get("family_module"))
    config = from_dict(ExperimentConfig, state["config"])
    model = families.build_model(config.model, state["input_spec"]).to(device)
    model.load_state_dict(state["model"])
    model.eval()
    return model, config, state
