"""Anomaly scores for a user's own series with a trained time-series VAE (``vaeflow anomaly``).

The CSV holds one row per time step and one column per channel of the training data (a header
row is optional). It is scaled with the scaler fitted at prepare time, cut into the model's
windows, and each window gets two scores (higher = more anomalous): the negative Monte-Carlo
reconstruction probability and the −ELBO, computed by the model's family (its ``anomaly_scores``).
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vaeflow.io import atomic_path
from vaeflow.modalities.base import ModelInputs
from vaeflow.modalities.timeseries.data import Scaler, SeriesDataError, read_numeric_csv, sliding_windows, windows_to_inputs
from vaeflow.models.families import family_of


@dataclasses.dataclass
class AnomalyScores:
    """Per-window anomaly scores (higher = more anomalous), in nats.

    Attributes:
        recon_prob: −(1/k) Σ_k log p(x | z_k), z_k ~ q(z | x): the negative Monte-Carlo
            reconstruction probability (An & Cho 2015).
        neg_elbo: recon_prob + KL(q(z | x) ‖ p(z)), the −ELBO of the window.
    """

    recon_prob: np.ndarray
    neg_elbo: np.ndarray


@torch.no_grad()
def anomaly_scores(model: Any, windows: torch.Tensor, *, labels: torch.Tensor | None = None, k: int = 16,
                   generator: torch.Generator | None = None, batch_size: int = 256) -> AnomalyScores:
    """Score windows (scaled units, NaN for padding) with a trained time-series model, through its
    family's ``anomaly_scores`` (which must give ``recon_prob`` and ``neg_elbo``).

    Shapes:
        windows: (N, T, C); labels: (N,) for a conditional model → each score (N,)
    """
    model.eval()
    family = family_of(model)
    device = next(model.parameters()).device
    parts: dict[str, list[torch.Tensor]] = {f.name: [] for f in dataclasses.fields(AnomalyScores)}
    for i in range(0, len(windows), batch_size):
        x, target = windows_to_inputs(windows[i : i + batch_size].to(device).float())
        lab = None if labels is None or not model.num_classes else labels[i : i + batch_size].to(device)
        scores = family.anomaly_scores(model, ModelInputs(x=x, target=target, labels=lab), k=k, generator=generator)
        for name, part in parts.items():
            part.append(scores[name].cpu())
    return AnomalyScores(**{name: torch.cat(part).numpy() for name, part in parts.items()})



def score_csv(model: Any, config: Any, csv_file: str | Path, out_file: str | Path, *, k: int | None = None,
              stride: int = 1, label: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Score every window of ``csv_file`` and write one row per window to ``out_file``.

    Raises:
        SeriesDataError: a file the model cannot score (ragged rows, NaN/inf or non-numbers, a
            channel count other than the training data's, fewer steps than a window), in one line.
    """
    spec = model.input_spec
    if "scaler" not in spec:
        raise SeriesDataError(f"this is not a time-series model (modality {config.modality!r}); pass a time-series model.pt")
    csv_file = Path(csv_file)
    if not csv_file.is_file():
        raise SeriesDataError(f"{csv_file}: no such file")
    try:
        text = csv_file.read_text()
    except UnicodeDecodeError:
        raise SeriesDataError(f"{csv_file}: not a text CSV file") from None
    values, _ = read_numeric_csv(text, name=str(csv_file), channels=spec["raw_channels"])
    bad = ~np.isfinite(values)
    if bad.any():
        t, c = np.argwhere(bad)[0]
        raise SeriesDataError(f"{csv_file}: {int(bad.sum())} missing or non-finite values (first at data row {t + 1}, "
                              f"column {c + 1}); fill or remove them first")
    window = spec["length"]
    if len(values) < window:
        raise SeriesDataError(f"{csv_file}: {len(values)} rows, fewer than the model's window of {window} steps")
    if model.num_classes and label is None:
        raise SeriesDataError(f"this model is conditional on {model.num_classes} classes: pass --label")
    scaled = Scaler.from_dict(spec["scaler"]).transform(values[:, spec["channels_kept"]])
    windows = torch.as_tensor(sliding_windows(scaled, window, stride), dtype=torch.float32)  # (N, T, C)
    labels = torch.full((len(windows),), int(label), dtype=torch.long) if model.num_classes else None
    k = k or config.evaluate.anomaly_k
    scores = anomaly_scores(model, windows, labels=labels, k=k, generator=torch.Generator().manual_seed(seed))
    with atomic_path(out_file) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["window", "start_row", "end_row", "recon_prob_score", "neg_elbo_score"])
        for i, (a, b) in enumerate(zip(scores.recon_prob, scores.neg_elbo)):
            w.writerow([i, i * stride, i * stride + window - 1, f"{a:.6g}", f"{b:.6g}"])
    top = int(np.argmax(scores.neg_elbo))
    return {"output": str(out_file), "windows": len(windows), "window": window, "stride": stride, "k": k,
            "max_neg_elbo_score": float(scores.neg_elbo[top]), "most_anomalous_start_row": top * stride,
            "median_neg_elbo_score": float(np.median(scores.neg_elbo))}
