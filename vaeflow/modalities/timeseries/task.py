"""Time-series samples in real units, evaluation figures and TimeGAN's post-hoc scores."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vaeflow import plots
from vaeflow.config import ConfigError
from vaeflow.modalities.base import ModalityTask
from vaeflow.modalities.timeseries import metrics as tsm
from vaeflow.modalities.timeseries.data import WindowDataset, to_real_units
from vaeflow.models.families import family_of


def embedding_figure(real: np.ndarray, fake: np.ndarray, path: str | Path, *, seed: int = 0, n: int = 500) -> None:
    """PCA (fitted on real) and t-SNE of channel-averaged windows, real vs generated (as in TimeGAN)."""
    rng = np.random.default_rng(seed)
    r = real[rng.permutation(len(real))[:n]].mean(2)  # (n, T, C) → (n, T)
    f = fake[rng.permutation(len(fake))[:n]].mean(2)
    mean = r.mean(0)
    _, _, vt = np.linalg.svd(r - mean, full_matrices=False)
    panels = {"PCA": (((r - mean) @ vt[:2].T), ((f - mean) @ vt[:2].T))}
    try:
        from sklearn.manifold import TSNE

        both = np.concatenate([r, f])
        emb = TSNE(n_components=2, perplexity=min(30.0, (len(both) - 1) / 3), init="pca",
                   random_state=seed % (2**31)).fit_transform(both)
        panels["t-SNE"] = (emb[: len(r)], emb[len(r) :])
    except ImportError:  # scikit-learn is optional: the PCA panel alone
        pass
    plots.real_vs_fake_scatter(panels, path)


def autocorrelation_figure(real: np.ndarray, fake: np.ndarray, path: str | Path, channel_names: list[str]) -> None:
    plots.series_panels({"real": tsm.autocorrelation(real)[None], "generated": tsm.autocorrelation(fake)[None]},
                        channel_names, path, title="mean autocorrelation at lags 1 … T/2")


# Generated series this many windows long are cut into windows for the long-horizon discriminative score.
LONG = 10


def sample_length(model: Any, length: int | None) -> dict[str, int]:
    """The ``length`` argument of the family's ``sample`` for ``sample.length`` (none for the window).

    Raises:
        ConfigError: a length other than the window for a family that generates whole windows only.
    """
    window = model.input_spec["length"]
    if length is None or length == window:
        return {}
    family = family_of(model)
    if not family.any_length:
        raise ConfigError(f"sample.length: the {model.family_name} family generates whole {window}-step windows "
                          f"only; remove sample.length (or set it to {window}), or train model.family: vrnn")
    return {"length": length}


class TimeSeriesTask(ModalityTask):
    def write_samples(self, model: Any, config: Any, paths: Any, out_dir: Path,
                      generator: torch.Generator) -> dict[str, Any]:
        spec = model.input_spec
        n = config.sample.n
        labels = torch.arange(n, device=generator.device) % model.num_classes if model.num_classes else None
        scaled = family_of(model).sample(model, n, generator=generator, labels=labels,
                                         temperature=config.sample.temperature,
                                         **sample_length(model, config.sample.length)).float().cpu().numpy()
        real = to_real_units(spec, scaled)  # (n, T, C) in the data's own units, T = sample.length
        names = spec["channel_names"]
        np.savez_compressed(out_dir / "samples.npz", samples=real.astype(np.float32), scaled=scaled.astype(np.float32),
                            labels=np.full(n, -1) if labels is None else labels.cpu().numpy(), channels=np.array(names))
        with open(out_dir / "samples_preview.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["sample", "step", *names])
            for i in range(min(n, 10)):
                for t in range(real.shape[1]):
                    w.writerow([i, t, *(f"{v:.6g}" for v in real[i, t])])
        plots.series_panels({"generated": real[:8]}, names, out_dir / "samples.png", title="generated sequences (real units)")
        return {"n_samples": n, "mean_scaled": float(scaled.mean()), "std_scaled": float(scaled.std())}

    def generated_like(self, model: Any, dataset: WindowDataset, generator: torch.Generator) -> np.ndarray:
        """As many generated windows as ``dataset`` holds, with its labels for a conditional model.

        Shapes:
            returns (N, T, C) in scaled units.
        """
        labels = dataset.y.to(generator.device) if model.num_classes else None
        family = family_of(model)
        out = []
        for i in range(0, len(dataset), 1024):
            lab = None if labels is None else labels[i : i + 1024]
            out.append(family.sample(model, min(1024, len(dataset) - i), generator=generator, labels=lab).float().cpu())
        return torch.cat(out).numpy()

    def windows_of_long_samples(self, model: Any, n: int, generator: torch.Generator) -> np.ndarray:
        """``n`` windows cut end to end from series generated ``LONG`` times the window's length (a
        family that generates any length), labels cycling through the classes of a conditional model.

        Shapes:
            returns (n, T, C) in scaled units.
        """
        window = model.input_spec["length"]
        series = -(-n // LONG)  # ceil(n / LONG)
        labels = torch.arange(series, device=generator.device) % model.num_classes if model.num_classes else None
        long = family_of(model).sample(model, series, generator=generator, labels=labels, length=LONG * window)
        return long.float().cpu().reshape(series * LONG, window, -1)[:n].numpy()  # (S, L·T, C) → (S·L, T, C)

    @torch.no_grad()
    def evaluation_figures(self, model: Any, dataset: WindowDataset, spec: dict[str, Any],
                           out_dir: Path, generator: torch.Generator) -> list[Path]:
        model.eval()
        real = np.nan_to_num(dataset.x.numpy())
        fake = self.generated_like(model, dataset, generator)
        paths = [out_dir / "real_vs_generated.png", out_dir / "pca_tsne.png", out_dir / "autocorrelation.png",
                 out_dir / "reconstructions.png"]
        anchor = None if dataset.anchor is None else dataset.anchor[:4]
        plots.series_panels({"real": to_real_units(spec, real[:4], anchor), "generated": to_real_units(spec, fake[:4])},
                            spec["channel_names"], paths[0], title="test windows vs generated (real units)")
        embedding_figure(real, fake, paths[1], seed=generator.initial_seed())
        autocorrelation_figure(real, fake, paths[2], spec["channel_names"])
        device = next(model.parameters()).device
        x = torch.nan_to_num(dataset.x[:4]).to(device)
        lab = dataset.y[:4].to(device) if model.num_classes else None
        recon = family_of(model).reconstruct(model, x, lab).cpu().numpy()
        plots.series_panels({"test": to_real_units(spec, x.cpu().numpy(), anchor),
                             "reconstruction": to_real_units(spec, recon, anchor)},
                            spec["channel_names"], paths[3], title="test windows and reconstructions from the posterior mean")
        return paths

    def evaluation_metrics(self, model: Any, config: Any, paths: Any, out_dir: Path,
                           generator: torch.Generator, *, progress: bool = True) -> dict[str, Any]:
        """TimeGAN's discriminative and predictive scores and the autocorrelation distance.

        As published (TimeGAN, TimeVAE), generated windows are compared with the windows the model
        was fitted on (the training split, ``*_train`` keys). Because our splits are in time order,
        the discriminative score and autocorrelation distance against the later test span
        (``*_test`` keys) also show how far the generated data are from the series' future. For a family
        that generates any length, ``discriminative_score_train_10x`` scores windows cut from series
        10 windows long against the training windows, so drift over long horizons is measured.
        """
        model.eval()
        ev, out = config.evaluate, {}
        for split in ("train", "test"):
            data = self.data.load(paths.processed, split)
            real = np.nan_to_num(data.x.numpy())
            with torch.no_grad():
                fake = self.generated_like(model, data, generator)
            disc = tsm.discriminative_score(real, fake, seeds=ev.posthoc_seeds, steps=ev.posthoc_steps, seed=config.seed)
            out |= {f"discriminative_score_{split}": disc.mean, f"discriminative_score_{split}_std": disc.std,
                    f"acf_distance_{split}": tsm.autocorrelation_distance(real, fake), f"n_generated_{split}": len(fake)}
            if split == "train":  # train on synthetic, test on the real windows the model was fitted on
                pred = tsm.predictive_score(fake, real, seeds=ev.posthoc_seeds, steps=ev.posthoc_steps, seed=config.seed)
                out |= {"predictive_score_train": pred.mean, "predictive_score_train_std": pred.std}
                if family_of(model).any_length:  # does a long roll-out drift away from the data?
                    with torch.no_grad():
                        far = self.windows_of_long_samples(model, len(real), generator)
                    disc = tsm.discriminative_score(real, far, seeds=ev.posthoc_seeds, steps=ev.posthoc_steps,
                                                    seed=config.seed)
                    out |= {f"discriminative_score_train_{LONG}x": disc.mean,
                            f"discriminative_score_train_{LONG}x_std": disc.std}
        return out | {"posthoc_seeds": ev.posthoc_seeds, "posthoc_steps": ev.posthoc_steps}
