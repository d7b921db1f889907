"""Anomaly scores for a user's own series with a trained time-series VAE (``vaeflow anomaly``).

The CSV holds one row per time step and one column per channel of the training data (a header
row is optional). It is scaled with the scaler fitted at prepare time, cut into the model's
windows, and each window gets two scores (higher = more anomalous): the negative Monte-Carlo
reconstruction probability and the −ELBO, computed by the model's family (its ``anomaly_scores``).
A family with a latent variable per step (the VRNN) also scores every step of the window: the
``step_scores`` column holds them space-separated in step order (empty for the whole-window VAEs).
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
from vaeflow.modalities.timeseries.data import (SeriesDataError, Stationariser, model_windows, read_numeric_csv,
                                                windows_to_inputs)
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
    # Per step of each window, from a family with a latent variable per step (the VRNN):
    # −(1/k) Σ_k log p(x_t | z_≤t, x_<t), NaN at padding; None for the whole-window VAEs. (N, T)
    recon_prob_steps: np.ndarray | None = None

    def step_column(self) -> list[str]:
        """The per-step scores of each window as one CSV field: space-separated, in step order
        (empty fields for a family without per-step scores)."""
        if self.recon_prob_steps is None:
            return [""] * len(self.recon_prob)
        return [" ".join(f"{v:.6g}" for v in row) for row in self.recon_prob_steps]

    def top_step(self) -> dict[str, int]:
        """Where the highest per-step score is: ``{"window": i, "step": t}`` (t within window i), or
        empty for a family without per-step scores."""
        if self.recon_prob_steps is None:
            return {}
        i, t = np.unravel_index(np.nanargmax(self.recon_prob_steps), self.recon_prob_steps.shape)
        return {"window": int(i), "step": int(t)}


@torch.no_grad()
def anomaly_scores(model: Any, windows: torch.Tensor, *, labels: torch.Tensor | None = None, k: int = 16,
                   generator: torch.Generator | None = None, batch_size: int = 256) -> AnomalyScores:
    """Score windows (scaled units, NaN for padding) with a trained time-series model, through its
    family's ``anomaly_scores`` (which must give ``recon_prob`` and ``neg_elbo``, and may give
    ``recon_prob_steps``).

    Shapes:
        windows: (N, T, C); labels: (N,) for a conditional model → each score (N,), per step (N, T)
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
            if name in scores:
                part.append(scores[name].cpu())
    return AnomalyScores(**{name: torch.cat(part).numpy() for name, part in parts.items() if part})



def score_csv(model: Any, config: Any, csv_file: str | Path, out_file: str | Path, *, k: int | None = None,
              stride: int = 1, label: int | None = None, seed: int = 0,
              reading: dict[str, Any] | None = None) -> dict[str, Any]:
    """Score every window of ``csv_file`` and write one row per window to ``out_file``.

    A model trained on your own files (``data.source: files``), or ``reading`` options (the data
    section's layout and column keys, e.g. ``{"layout": "long", "series_column": "id"}``), read
    the file in that layout with :func:`score_file`; otherwise it is a headerless-or-not CSV of
    the training channels in time order.

    Raises:
        SeriesDataError: a file the model cannot score (ragged rows, NaN/inf or non-numbers, a
            channel count other than the training data's, fewer steps than a window), in one line.
    """
    spec = model.input_spec
    if "scaler" not in spec:
        raise SeriesDataError(f"this is not a time-series model (modality {config.modality!r}); pass a time-series model.pt")
    if reading or config.data.source == "files":
        return score_file(model, config, csv_file, out_file, k=k, stride=stride, label=label, seed=seed,
                          reading=reading or {})
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
    lost = Stationariser.from_spec(spec).lost_steps  # a window of changes starts one row after its anchor row
    if len(values) < window + lost:
        raise SeriesDataError(f"{csv_file}: {len(values)} rows, fewer than the model's window of {window} steps"
                              + (f" plus the {lost} row its data.transform takes" if lost else ""))
    if model.num_classes and label is None:
        raise SeriesDataError(f"this model is conditional on {model.num_classes} classes: pass --label")
    windows = torch.as_tensor(model_windows(spec, values[:, spec["channels_kept"]], window, stride),
                              dtype=torch.float32)  # (N, T, C)
    labels = torch.full((len(windows),), int(label), dtype=torch.long) if model.num_classes else None
    k = k or config.evaluate.anomaly_k
    scores = anomaly_scores(model, windows, labels=labels, k=k, generator=torch.Generator().manual_seed(seed))
    with atomic_path(out_file) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["window", "start_row", "end_row", "recon_prob_score", "neg_elbo_score", "step_scores"])
        for i, (a, b, steps) in enumerate(zip(scores.recon_prob, scores.neg_elbo, scores.step_column())):
            w.writerow([i, i * stride + lost, i * stride + lost + window - 1, f"{a:.6g}", f"{b:.6g}", steps])
    top = int(np.argmax(scores.neg_elbo))
    step = scores.top_step()
    return {"output": str(out_file), "windows": len(windows), "window": window, "stride": stride, "k": k,
            "max_neg_elbo_score": float(scores.neg_elbo[top]), "most_anomalous_start_row": top * stride + lost,
            "median_neg_elbo_score": float(np.median(scores.neg_elbo)),
            **({"most_anomalous_step_row": step["window"] * stride + lost + step["step"]} if step else {})}


def score_file(model: Any, config: Any, path: str | Path, out_file: str | Path, *, k: int | None = None,
               stride: int = 1, label: int | None = None, seed: int = 0,
               reading: dict[str, Any] | None = None) -> dict[str, Any]:
    """Score every window of every series of a CSV/TSV(.gz)/Parquet file in the wide or long layout.

    The file is read as prepare reads a training file (``files.read_series_file``) with the model's
    data section, ``reading`` on top; ``data.value_columns`` defaults to the model's channels. Each
    series is cleaned with the model's ``data.missing``, scaled with its scaler and cut into its
    windows; a conditional model takes each series' label from the label column (or ``label``).

    Raises:
        SeriesDataError, TableError, ConfigError: a file or option the model cannot score, in one line.
    """
    from vaeflow.modalities.timeseries.data import clean
    from vaeflow.modalities.timeseries.files import read_series_file

    spec = model.input_spec
    reading = dict(reading or {})
    if reading.get("layout") == "wide":  # one series: the model's series and label columns do not apply
        reading = {"series_column": None, "label_column": None} | reading
    data = dataclasses.replace(config.data, source="files", path=str(path), **reading)
    names = spec.get("raw_channel_names")
    got = read_series_file(path, data, channels=None if data.value_columns else names)
    if len(got.channel_names) != spec["raw_channels"]:
        raise SeriesDataError(f"{path}: {len(got.channel_names)} value columns {got.channel_names}, but the model "
                              f"was trained on {spec['raw_channels']}{f' ({names})' if names else ''}; set --value-columns")
    window = spec["length"]
    lost = Stationariser.from_spec(spec).lost_steps  # a window of changes starts one step after its anchor
    classes = {c: i for i, c in enumerate(spec.get("class_names") or [])}
    if model.num_classes and got.labels is None and label is None:
        raise SeriesDataError(f"this model is conditional on {model.num_classes} classes: pass --label, or "
                              "--label-column for a long file with one label per series")
    counts: dict[str, Any] = dict.fromkeys(("nonfinite_values", "imputed_values", "dropped_steps",
                                            "series_all_missing"), 0)
    rows, all_windows, all_labels, short = [], [], [], 0
    for i, (sid, values) in enumerate(zip(got.ids, got.series)):
        times = got.times[i]
        keep = np.isfinite(values).all(1) if data.missing == "drop" else None
        cleaned = clean(values, data.missing, counts, where=f"{path}: series {sid!r}")
        if cleaned is None or len(cleaned) < window + lost:
            short += 1
            continue
        if keep is not None:  # the steps clean() dropped
            times = None if times is None else times[keep]
        w = model_windows(spec, cleaned[:, spec["channels_kept"]], window, stride)  # (N_i, T, C)
        if model.num_classes:
            text = got.labels[i] if got.labels is not None else None
            if text is not None and text not in classes:
                raise SeriesDataError(f"{path}: series {sid!r} has label {text!r}, not one the model knows "
                                      f"({sorted(classes)})")
            all_labels.append(np.full(len(w), classes[text] if text is not None else int(label)))
        all_windows.append(w)
        for j in range(len(w)):
            a, b = j * stride + lost, j * stride + lost + window - 1
            rows.append([sid, j, a, b, _time_text(times, a), _time_text(times, b)])
    if not all_windows:
        raise SeriesDataError(f"{path}: no series has the model's window of {window} steps ({short} too short)")
    windows = torch.as_tensor(np.concatenate(all_windows), dtype=torch.float32)
    labels = torch.as_tensor(np.concatenate(all_labels), dtype=torch.long) if model.num_classes else None
    k = k or config.evaluate.anomaly_k
    scores = anomaly_scores(model, windows, labels=labels, k=k, generator=torch.Generator().manual_seed(seed))
    with atomic_path(out_file) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["series", "window", "start_step", "end_step", "start_time", "end_time",
                    "recon_prob_score", "neg_elbo_score", "step_scores"])
        for row, a, b, steps in zip(rows, scores.recon_prob, scores.neg_elbo, scores.step_column()):
            w.writerow([*row, f"{a:.6g}", f"{b:.6g}", steps])
    top = int(np.argmax(scores.neg_elbo))
    return {"output": str(out_file), "series": len(got.series) - short, "series_too_short": short,
            "windows": len(windows), "window": window, "stride": stride, "k": k,
            "bad_records": got.counts["bad_records"], "gap_steps": got.counts["gap_steps"],
            "imputed_values": counts["imputed_values"], "dropped_steps": counts["dropped_steps"],
            "max_neg_elbo_score": float(scores.neg_elbo[top]), "most_anomalous_series": rows[top][0],
            "most_anomalous_start_step": rows[top][2], "most_anomalous_start_time": rows[top][4],
            "median_neg_elbo_score": float(np.median(scores.neg_elbo)),
            **({"most_anomalous_step_series": rows[step["window"]][0],
                "most_anomalous_step": rows[step["window"]][2] + step["step"]} if (step := scores.top_step()) else {})}


def _time_text(times: np.ndarray | None, step: int) -> str:
    """A step's time as text: a date/time (int64 ns), a number, or empty without a time column."""
    import pandas as pd

    if times is None:
        return ""
    return str(pd.Timestamp(int(times[step]))) if times.dtype.kind == "i" else f"{times[step]:g}"
