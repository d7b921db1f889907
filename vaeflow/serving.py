"""The MLflow pyfunc model: rebuilds the VAE from the checkpoint's config + state dict.

No pickled modules travel with the model; the checkpoint loads with ``weights_only=True``.
``predict`` answers three modes (chosen with the ``mode`` param):

- ``encode``: inputs → posterior means, shape (N, latent_dim)
- ``reconstruct``: inputs → decoded means, same shape as the inputs
- ``sample``: ignores the rows; draws ``n`` samples with ``seed`` and ``temperature``
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import torch

# Params a caller may pass to predict, with their defaults (also the signature's param schema).
PREDICT_PARAMS: dict[str, Any] = {"mode": "encode", "n": 16, "seed": 0, "temperature": 1.0, "label": 0}
MODES = ("encode", "reconstruct", "sample")


class VAEPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from vaeflow.training.checkpoint import load_model

        from vaeflow import registry

        self.model, self.config, state = load_model(context.artifacts["checkpoint"])
        self.spec = state["input_spec"]
        self.modality = registry.MODALITIES.get_or_raise(self.config.modality)()

    def _labels(self, n: int, label: int) -> torch.Tensor | None:
        return torch.full((n,), int(label), dtype=torch.long) if self.model.num_classes else None

    @torch.no_grad()
    def predict(self, context, model_input, params=None):  # no type hints: the signature is logged explicitly
        p = PREDICT_PARAMS | (params or {})
        if p["mode"] not in MODES:
            raise ValueError(f"mode {p['mode']!r} is not one of {MODES}")
        if p["mode"] == "sample":
            g = torch.Generator().manual_seed(int(p["seed"]))
            out = self.model.sample(int(p["n"]), generator=g, labels=self._labels(int(p["n"]), p["label"]),
                                    temperature=float(p["temperature"]))
            return out.numpy()
        x = self.modality.encoder_input(model_input, self.spec)
        labels = self._labels(getattr(x, "num_graphs", None) or len(x), p["label"])
        q = self.model.encode(x, labels)
        if p["mode"] == "encode":
            return q.mu.numpy()
        return self.model.decoder.mean(self.model.decode(q.mu, labels)).numpy()
