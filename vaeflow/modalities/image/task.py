"""Image samples and evaluation figures: prior sample grids, reconstructions, interpolation, latent PCA;
sample quality (FD, precision/recall in the in-domain classifier's features, ``quality.py``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vaeflow import plots
from vaeflow.config import ConfigError
from vaeflow.modalities.base import ModalityTask
from vaeflow.modalities.image import quality
from vaeflow.modalities.image.data import ImageDataset
from vaeflow.models.families import family_of

log = logging.getLogger(__name__)


class ImageTask(ModalityTask):
    def write_samples(self, model: Any, config: Any, paths: Any, out_dir: Path,
                      generator: torch.Generator) -> dict[str, Any]:
        n = config.sample.n
        labels = torch.arange(n) % model.num_classes if model.num_classes else None
        images = family_of(model).sample(model, n, generator=generator, labels=labels, temperature=config.sample.temperature)
        images = images.float().cpu().numpy()  # (n, C, H, W) Bernoulli/Gaussian means in [0, 1]
        np.savez_compressed(out_dir / "samples.npz", images=images.astype(np.float16))
        plots.image_grid(images[:64], out_dir / "prior_samples.png", nrow=8,
                         title=f"prior samples (temperature {config.sample.temperature})")
        return {"n_samples": n, "mean_pixel": float(images.mean())}

    @torch.no_grad()
    def evaluation_figures(self, model: Any, dataset: ImageDataset, spec: dict[str, Any],
                           out_dir: Path, generator: torch.Generator) -> list[Path]:
        model.eval()
        family = family_of(model)
        device = next(model.parameters()).device
        x = dataset.x.float().to(device) / 255.0
        y = dataset.y.to(device)
        labels = y if model.num_classes else None
        mean = lambda z, lab: family.decode(model, z, lab).cpu().numpy()  # noqa: E731
        encode = lambda x, lab: family.encode(model, x, lab)  # noqa: E731  (the VAE: posterior means)

        # Reconstructions: rows alternate originals and reconstructions from the posterior mean.
        n = min(16, len(x))
        recon = mean(encode(x[:n], None if labels is None else labels[:n]), None if labels is None else labels[:n])
        pairs = np.stack([x[:n].cpu().numpy(), recon], 1).reshape(2 * n, *recon.shape[1:])  # (n, 2, C, H, W) → (2n, …)
        paths = [out_dir / "reconstructions.png", out_dir / "interpolation.png", out_dir / "latent_pca.png"]
        plots.image_grid(np.concatenate([pairs[0::2][:8], pairs[1::2][:8], pairs[0::2][8:], pairs[1::2][8:]]),
                         paths[0], nrow=8, title="test images (rows 1, 3) and reconstructions (rows 2, 4)")

        # Interpolation: linear paths between the posterior means of random test pairs.
        steps, rows = 10, []
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(int(generator.initial_seed())))[:64]
        half = max(len(idx) // 2, 1)  # 32 pairs from 64 images; a small test split pairs what it has
        starts = [int(i) for i in idx[:half]]
        ends = [int(j) for j in idx[half : 2 * half]] or starts
        for a, b in list(zip(starts, ends))[:6]:
            mu = encode(x[[a, b]], None if labels is None else labels[[a, b]])  # (2, D)
            t = torch.linspace(0, 1, steps, device=device)[:, None]
            path = (1 - t) * mu[0] + t * mu[1]  # (steps, D)
            lab = None if labels is None else torch.where(t[:, 0] < 0.5, labels[a], labels[b])
            rows.append(mean(path, lab))
        plots.image_grid(np.concatenate(rows), paths[1], nrow=steps, title="latent interpolation between test images")

        # Latent scatter of posterior means over the test set.
        mus = torch.cat([encode(x[i : i + 1024], None if labels is None else labels[i : i + 1024])
                         for i in range(0, len(x), 1024)])
        plots.latent_scatter(mus.cpu().numpy(), y.cpu().numpy(), paths[2], class_names=spec.get("class_names", ()))
        return paths

    def training_monitor(self, config: Any, paths: Any) -> quality.FDMonitor | None:
        """The VAE-GAN's ``val_fd`` every ``model.vaegan.fd_every_epochs`` epochs (``quality.FDMonitor``)."""
        if config.model.family != "vaegan" or not config.model.vaegan.fd_every_epochs:
            return None
        opts = config.model.vaegan
        try:
            return quality.FDMonitor.build(paths.classifier, self.data.load(paths.processed, "val"),
                                           every=opts.fd_every_epochs, n=opts.fd_samples)
        except (FileNotFoundError, ValueError) as exc:
            raise ConfigError(f"model.vaegan.fd_every_epochs needs the in-domain classifier: {exc}; or set "
                              "model.vaegan.fd_every_epochs: 0") from None

    def evaluation_metrics(self, model: Any, config: Any, paths: Any, out_dir: Path,
                           generator: torch.Generator, *, progress: bool = True) -> dict[str, float]:
        """FD, precision and recall of the model's samples and of the two reference sets (``quality.sample_quality``)."""
        device = next(model.parameters()).device
        classifier, scores = quality.load_classifier(paths.classifier, device)
        if classifier is None:
            log.warning("no FD, precision or recall: %s", scores["skipped"])
            return {}
        train, test = (self.data.load(paths.processed, split) for split in ("train", "test"))
        metrics = quality.sample_quality(model, classifier, train, test, config.evaluate, generator)
        return metrics | {"classifier_test_accuracy": scores["test_accuracy"]}
