"""Sample quality for images without downloaded weights: an in-domain classifier's features, FD and precision/recall.

FID needs Inception weights fetched at run time, which offline machines and CI cannot do, and
ImageNet features say little about 28×28 grey clothes. Instead a small CNN is trained once per
data set on its own training split (the ``classifier`` stage, a DVC-cached output); its
penultimate layer embeds the model's samples, the test set, and two reference sets whose scores
bracket a model's: the training set (the floor: as close to the test set as real data get) and a
Gaussian-blurred test set (what blur alone costs). The distances are in that classifier's units:
comparable between models evaluated with the same classifier, not with Inception FID.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vaeflow.io import atomic_path
from vaeflow.modalities.base import TrainingMonitor
from vaeflow.modalities.image.config import ClassifierConfig, ImageEvaluateConfig
from vaeflow.modalities.image.data import ImageDataset
from vaeflow.modalities.image.metrics import Gaussian, frechet_distance, precision_recall
from vaeflow.models.families import family_of

CLASSIFIER_FILE = "classifier.pt"


class FeatureClassifier(nn.Module):
    """Three conv blocks (batch-normalised: a few epochs suffice), average pooling to 2×2, a
    ``feature_dim`` penultimate layer and the class logits.

    The adaptive pooling makes it work for any image size the data side prepares (28×28 grey, 32×32 RGB …).

    Shapes:
        x: (N, C, H, W) pixels in [0, 1] → features (N, feature_dim), logits (N, num_classes).
    """

    def __init__(self, *, in_channels: int, num_classes: int, width: int = 32, feature_dim: int = 128):
        super().__init__()
        self.kwargs = {"in_channels": in_channels, "num_classes": num_classes, "width": width, "feature_dim": feature_dim}
        w = width
        block = lambda c_in, c_out: [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]  # noqa: E731
        self.body = nn.Sequential(
            *block(in_channels, w), nn.MaxPool2d(2),
            *block(w, 2 * w), nn.MaxPool2d(2),
            *block(2 * w, 4 * w),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(),  # (N, 4w, h, w) → (N, 4w · 2 · 2)
            nn.Linear(16 * w, feature_dim), nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def pixels(dataset: ImageDataset) -> torch.Tensor:
    """The stored uint8 images as floats in [0, 1] (grey levels, not binarised: what a decoder's mean is)."""
    return dataset.x.float() / 255.0


def accuracy(classifier: FeatureClassifier, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    classifier.eval()
    with torch.no_grad():
        correct = sum(int((classifier(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
                      for i in range(0, len(x), batch_size))
    return correct / max(len(x), 1)


def fit_classifier(train: ImageDataset, test: ImageDataset, num_classes: int, config: ClassifierConfig,
                   seed: int) -> tuple[FeatureClassifier, dict[str, Any]]:
    """Train the classifier on ``train`` (seeded, on the CPU: the same weights on every machine); score it on ``test``."""
    x, y = pixels(train), train.y
    with torch.random.fork_rng(devices=[]):  # seeded initial weights, leaving the caller's random state alone
        torch.manual_seed(seed)
        model = FeatureClassifier(in_channels=x.shape[1], num_classes=num_classes, width=config.width,
                                  feature_dim=config.feature_dim)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    g = torch.Generator().manual_seed(seed)
    for _ in range(config.epochs):
        model.train()
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), config.batch_size):
            idx = order[i : i + config.batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    metrics = {"train_accuracy": accuracy(model, x, y), "test_accuracy": accuracy(model, pixels(test), test.y),
               "epochs": config.epochs, "n_train": len(x), "n_test": len(test), "num_classes": num_classes,
               "feature_dim": config.feature_dim}
    return model, metrics


def save_classifier(model: FeatureClassifier | None, metrics: dict[str, Any], out_dir: Path) -> None:
    """Write ``out_dir/classifier.pt`` atomically: the state dict, the constructor's arguments and its
    scores; ``model`` None records that no classifier could be trained (``metrics["skipped"]`` says why)."""
    weights = {} if model is None else {"state_dict": model.state_dict(), "kwargs": model.kwargs}
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        torch.save(weights | {"metrics": metrics}, tmp / CLASSIFIER_FILE)


def load_classifier(model_dir: Path, device: torch.device | str = "cpu") -> tuple[FeatureClassifier | None, dict[str, Any]]:
    """The classifier the ``classifier`` stage wrote (tensors and plain values only: ``weights_only``),
    or None where it recorded that none could be trained."""
    path = Path(model_dir) / CLASSIFIER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run the classifier stage first "
                                "(dvc repro classifier, or vaeflow classifier --modality image)")
    saved = torch.load(path, map_location=device, weights_only=True)
    if "state_dict" not in saved:
        return None, saved["metrics"]
    model = FeatureClassifier(**saved["kwargs"]).to(device)
    model.load_state_dict(saved["state_dict"])
    return model.eval(), saved["metrics"]


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of each channel (kernel radius ⌈3σ⌉, reflected borders).

    Shapes: x (N, C, H, W) → (N, C, H, W); H and W must exceed the radius.
    """
    radius = math.ceil(3 * sigma)
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)  # along W
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)  # along H


def embed(classifier: FeatureClassifier, images: torch.Tensor, batch_size: int) -> np.ndarray:
    """Penultimate features of images in [0, 1]. Shapes: images (N, C, H, W) → (N, feature_dim)."""
    device = next(classifier.parameters()).device
    with torch.no_grad():
        return torch.cat([classifier.features(images[i : i + batch_size].to(device)).float().cpu()
                          for i in range(0, len(images), batch_size)]).numpy()


def draw_samples(model: nn.Module, n: int, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` samples of any image family at temperature 1 (the model's own distribution), the classes
    of a conditional model in turn. Shapes: → (n, C, H, W) on the CPU."""
    family, num_classes = family_of(model), getattr(model, "num_classes", 0)
    out = []
    for start in range(0, n, batch_size):
        m = min(batch_size, n - start)
        labels = (torch.arange(start, start + m) % num_classes).to(generator.device) if num_classes else None
        out.append(family.sample(model, m, generator=generator, labels=labels).float().cpu())
    return torch.cat(out)


def sample_quality(model: nn.Module, classifier: FeatureClassifier, train: ImageDataset, test: ImageDataset,
                   config: ImageEvaluateConfig, generator: torch.Generator) -> dict[str, float]:
    """FD, precision and recall of ``config.n_fd_samples`` model samples against the test set, and of
    the two reference sets: as many training images (``*_train_vs_test``) and the blurred test set
    (``*_blurred_test``)."""
    test_x = pixels(test)
    # A seeded subset of the training split, as large as the sample set (or the whole split).
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(generator.initial_seed()))
    train_x = pixels(train)[pick[: config.n_fd_samples]]
    model.eval()
    with torch.no_grad():
        samples = draw_samples(model, config.n_fd_samples, config.batch_size, generator)
    feats = {name: embed(classifier, x, config.batch_size) for name, x in
             {"test": test_x, "samples": samples, "train": train_x,
              "blurred": gaussian_blur(test_x, config.blur_sigma)}.items()}
    reference = Gaussian.fit(feats["test"])
    metrics: dict[str, float] = {}
    for name, suffix in (("samples", ""), ("train", "_train_vs_test"), ("blurred", "_blurred_test")):
        pr = precision_recall(feats["test"], feats[name], k=config.pr_k)
        metrics |= {f"fd{suffix}": frechet_distance(Gaussian.fit(feats[name]), reference),
                    f"precision{suffix}": pr.precision, f"recall{suffix}": pr.recall}
    return metrics | {"n_fd_samples": len(samples), "n_fd_train": len(train_x)}


class FDMonitor(TrainingMonitor):
    """``val_fd`` during training: the FD of ``n`` prior samples against the validation images, in the
    classifier stage's features (the reference statistics are computed once, on the driver).

    Args:
        classifier: the classifier stage's weights and constructor arguments (``classifier.pt``).
        reference: the validation images' feature Gaussian.
        every: epochs between measurements.
        n: samples per measurement.
        batch_size: sampling and embedding batch.
    """

    def __init__(self, classifier: dict[str, Any], reference: Gaussian, *, every: int, n: int, batch_size: int = 500):
        self.classifier, self.reference = classifier, reference
        self.every, self.n, self.batch_size = every, n, batch_size

    @classmethod
    def build(cls, classifier_dir: Path, val: ImageDataset, *, every: int, n: int) -> FDMonitor:
        """Raises: FileNotFoundError (no classifier stage output), ValueError (one that has no weights)."""
        classifier, metrics = load_classifier(classifier_dir)
        if classifier is None:
            raise ValueError(f"no val_fd: {metrics['skipped']}")
        reference = Gaussian.fit(embed(classifier, pixels(val), 500))
        return cls({"state_dict": classifier.state_dict(), "kwargs": classifier.kwargs}, reference, every=every, n=n)

    def names(self) -> tuple[str, ...]:
        return ("val_fd",)

    def __call__(self, model: nn.Module, device: torch.device, generator: torch.Generator) -> dict[str, float]:
        classifier = FeatureClassifier(**self.classifier["kwargs"]).to(device)
        classifier.load_state_dict(self.classifier["state_dict"])
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                samples = draw_samples(model, self.n, self.batch_size, generator)
        finally:
            model.train(was_training)
        features = embed(classifier.eval(), samples, self.batch_size)
        return {"val_fd": frechet_distance(Gaussian.fit(features), self.reference)}
