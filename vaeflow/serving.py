"""The MLflow pyfunc model: rebuilds the model from the checkpoint's config + state dict and answers
through its family's verbs (``encode``, ``reconstruct``, ``sample``).

No pickled modules travel with the model; the checkpoint loads with ``weights_only=True``.
``predict`` answers three modes (chosen with the ``mode`` param):

- ``encode``: inputs → latent codes (the VAE's posterior means), shape (N, latent_dim)
- ``reconstruct``: inputs → decoded means, same shape as the inputs (molecules: greedy SMILES)

Molecules are answered per row (``ModalityData.serving_rows``): encode gives columns ``z0`` …
``z{latent_dim-1}``, reconstruct a ``SMILES`` column, each with ``valid`` and ``reason``; a SMILES
that cannot be featurised gets NaN values, ``valid=False`` and the reason, the other rows their answer.
- ``sample``: ignores the rows; draws ``n`` samples with ``seed`` and ``temperature``
  (molecules: a ``SMILES`` column)

A class-conditional model takes ``label``; a property-conditional molecule model takes
``properties``, a JSON object of targets in real units (e.g. ``{"logP": 3.0}``; properties left out
are held at the training mean), and conditions encode/reconstruct on the inputs' own properties.
"""

from __future__ import annotations

import json
from typing import Any

import mlflow.pyfunc
import torch

# Params a caller may pass to predict, with their defaults (also the signature's param schema).
PREDICT_PARAMS: dict[str, Any] = {"mode": "encode", "n": 16, "seed": 0, "temperature": 1.0, "label": 0,
                                  "properties": "{}"}
MODES = ("encode", "reconstruct", "sample")


class VAEPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from vaeflow.models.families import family_of
        from vaeflow.training.checkpoint import load_model

        from vaeflow import registry

        self.model, self.config, state = load_model(context.artifacts["checkpoint"])
        self.family = family_of(self.model)
        self.spec = state["input_spec"]
        self.modality = registry.MODALITIES.get_or_raise(self.config.modality).data

    def _condition(self, n: int, p: dict[str, Any], inputs: Any = None) -> torch.Tensor | None:
        """The condition of a conditional model for n rows; None for an unconditional one."""
        if self.model.num_classes:
            return torch.full((n,), int(p["label"]), dtype=torch.long)
        if not self.model.condition_dim:
            return None
        if inputs is not None:
            return inputs.properties
        from vaeflow.modalities.molecule.task import sample_conditions

        targets = json.loads(p["properties"] or "{}")
        return sample_conditions(self.model, self.spec, targets, n, generator=None)

    @torch.no_grad()
    def predict(self, context, model_input, params=None):  # no type hints: the signature is logged explicitly
        p = PREDICT_PARAMS | (params or {})
        if p["mode"] not in MODES:
            raise ValueError(f"mode {p['mode']!r} is not one of {MODES}")
        if p["mode"] == "sample":
            g = torch.Generator().manual_seed(int(p["seed"]))
            out = self.family.sample(self.model, int(p["n"]), generator=g, labels=self._condition(int(p["n"]), p),
                                     temperature=float(p["temperature"]))
            return self.modality.predictions(out, self.spec)
        # Rows the encoder cannot read (e.g. an unparsable SMILES) are answered per row, not as a failure.
        rows = self.modality.serving_rows(model_input, self.spec)
        x = rows.x
        if x is None:  # no readable row: an empty answer of the usual columns
            empty = torch.zeros(0, self.model.latent_dim)
            return rows.frame(empty.numpy() if p["mode"] == "encode"
                              else self.modality.predictions(torch.zeros(0, 0, dtype=torch.long), self.spec))
        labels = self._condition(getattr(x, "num_graphs", None) or len(x), p, x if self.model.condition_dim else None)
        if p["mode"] == "encode":
            return rows.frame(self.family.encode(self.model, x, labels).numpy())
        return rows.frame(self.modality.predictions(self.family.reconstruct(self.model, x, labels), self.spec))
