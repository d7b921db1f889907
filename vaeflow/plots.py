"""Figures written as PNG files: image grids, interpolation strips, latent scatter, training curves."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from vaeflow.io import atomic_path  # noqa: E402


def _save(fig: Any, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)


def tile(images: np.ndarray, nrow: int) -> np.ndarray:
    """Tile images into one picture.

    Shapes:
        images: (N, C, H, W) in [0, 1] → (rows*(H+1)+1, nrow*(W+1)+1, C)
    """
    n, c, h, w = images.shape
    rows = -(-n // nrow)
    canvas = np.ones((rows * (h + 1) + 1, nrow * (w + 1) + 1, c), dtype=np.float32)
    for i, img in enumerate(images):
        r, col = divmod(i, nrow)
        canvas[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + col * (w + 1) : 1 + col * (w + 1) + w] = img.transpose(1, 2, 0)
    return canvas


def image_grid(images: np.ndarray, path: str | Path, *, nrow: int = 8, title: str = "") -> None:
    canvas = tile(np.clip(images, 0, 1), nrow)
    fig, ax = plt.subplots(figsize=(canvas.shape[1] / 30, canvas.shape[0] / 30 + (0.4 if title else 0)))
    ax.imshow(canvas.squeeze(-1) if canvas.shape[-1] == 1 else canvas, cmap="gray", vmin=0, vmax=1)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    _save(fig, path)


def latent_scatter(z: np.ndarray, labels: np.ndarray, path: str | Path, *, class_names: Sequence[str] = ()) -> None:
    """2-D PCA of latent means, coloured by class. Shapes: z: (N, D); labels: (N,)."""
    centred = z - z.mean(0)
    if z.shape[1] > 2:
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        xy, axes = centred @ vt[:2].T, ("PC 1", "PC 2")
    else:
        xy, axes = np.pad(centred, ((0, 0), (0, 2 - z.shape[1]))), ("z 1", "z 2")
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    cmap = plt.get_cmap("tab10")
    for c in np.unique(labels):
        m = labels == c
        name = class_names[c] if c < len(class_names) else str(c)
        ax.scatter(xy[m, 0], xy[m, 1], s=4, alpha=0.6, color=cmap(int(c) % 10), label=name)
    ax.set_xlabel(axes[0])
    ax.set_ylabel(axes[1])
    ax.set_title("Posterior means of test examples")
    ax.legend(markerscale=3, fontsize=7, loc="best")
    _save(fig, path)


def training_curves(history: Sequence[dict[str, float]], path: str | Path) -> None:
    """Train vs validation curves per epoch of every metric the rows hold as ``train_<m>`` and
    ``val_<m>`` (a VAE: loss, −ELBO, reconstruction and KL, in that order)."""
    epochs = [row["epoch"] for row in history]
    titles = {"loss": "loss (β-weighted)", "neg_elbo": "−ELBO (nats)", "recon": "−log p(x|z)", "kl": "KL(q‖p)"}
    logged = [k[len("train_"):] for k in history[0] if k.startswith("train_") and f"val_{k[len('train_'):]}" in history[0]]
    keys = [k for k in titles if k in logged] + [k for k in logged if k not in titles]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.75 * len(keys), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for split, style in (("train", "-o"), ("val", "--s")):
            ax.plot(epochs, [row[f"{split}_{key}"] for row in history], style, ms=3, label=split)
        ax.set_title(titles.get(key, key))
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
    _save(fig, path)


def series_panels(groups: dict[str, np.ndarray], channel_names: Sequence[str], path: str | Path, *,
                  title: str = "", max_channels: int = 6) -> None:
    """One panel per channel (up to ``max_channels``), each group's windows overlaid in its colour.

    Shapes:
        groups: name → (N, T, C) windows; NaN steps (padding) are not drawn.
    """
    c = min(len(channel_names), max_channels)
    fig, axes = plt.subplots(1, c, figsize=(3.2 * c, 2.8), squeeze=False)
    colours = plt.get_cmap("tab10")
    for j in range(c):
        ax = axes[0, j]
        for k, (name, x) in enumerate(groups.items()):
            for i, w in enumerate(x):
                ax.plot(w[:, j], color=colours(k), alpha=0.7, lw=1, label=name if i == 0 else None)
        ax.set_title(channel_names[j], fontsize=9)
        ax.set_xlabel("step")
    axes[0, 0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def real_vs_fake_scatter(panels: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path) -> None:
    """One 2-D scatter per embedding (PCA, t-SNE), real in blue, generated in red. Shapes: (N, 2) each."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.3), squeeze=False)
    for ax, (name, (real, fake)) in zip(axes[0], panels.items()):
        ax.scatter(real[:, 0], real[:, 1], s=5, alpha=0.5, c="tab:blue", label="real (test)")
        ax.scatter(fake[:, 0], fake[:, 1], s=5, alpha=0.5, c="tab:red", label="generated")
        ax.set_title(name)
        ax.legend(markerscale=3, fontsize=8)
    _save(fig, path)
