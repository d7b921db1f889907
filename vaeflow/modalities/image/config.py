"""The image modality's own config sections: what its data side, task side and ``stages`` read."""

from __future__ import annotations

import dataclasses
from typing import Literal

from vaeflow.config import DataConfig, EvaluateConfig, SampleConfig, require, require_positive


@dataclasses.dataclass(frozen=True)
class ImageDataConfig(DataConfig):
    """``data``: an MNIST-format data set (IDX files) or your own images, their splits and the binarisation.

    The keys from ``mode`` on are read for ``source: files`` only (docs/image.md, "Your own images").
    """

    dataset: str = "fashion-mnist"
    # Held out from the official training split, chosen with the job seed, for keep-best and warm-up.
    val_size: int = 5000
    # Seeded subsets for quick and tiny runs; None keeps the whole split.
    limit_train: int | None = None
    limit_test: int | None = None
    # Dynamic binarisation of pixels (the standard protocol for Bernoulli likelihoods); read by
    # train and evaluate (model inputs), not by prepare.
    binarize: bool = True
    # --- source: files ---
    # Pixel format stored: L (grey, 1 channel) or RGB (3); auto: RGB if any kept image has colour, else L.
    mode: Literal["auto", "L", "RGB"] = "auto"
    # Square side every image is resized to; None keeps the files' own size (then all must match).
    image_size: int | None = None
    # none: resize to image_size × image_size (the aspect ratio may change); center: scale the
    # shorter side to image_size and cut the centre square.
    crop: Literal["none", "center"] = "none"
    # An image with an alpha channel (RGBA, LA, transparent palette) is quarantined (reject), or
    # loses its alpha channel (drop: the colour values are kept as they are, not composited).
    alpha: Literal["reject", "drop"] = "reject"
    # Images whose shorter side (before resizing) has fewer pixels are quarantined.
    min_size: int = 8
    # Seeded random split of your files: these fractions go to val and test, the rest to train.
    val_fraction: float = 0.1
    test_fraction: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.val_size >= 0, f"data.val_size must be ≥ 0, got {self.val_size}")
        require(self.image_size is None or self.image_size >= 1, f"data.image_size must be ≥ 1 or null, got {self.image_size}")
        require(self.crop == "none" or self.image_size is not None,
                "data.crop: center needs data.image_size (the side of the square to cut); set it, e.g. data.image_size=32")
        require(self.min_size >= 1, f"data.min_size must be ≥ 1, got {self.min_size}")
        require(0 < self.val_fraction and 0 < self.test_fraction and self.val_fraction + self.test_fraction < 1,
                f"data.val_fraction and data.test_fraction must be > 0 and sum to < 1, got "
                f"{self.val_fraction} and {self.test_fraction}")
        require(not (self.mode == "RGB" and self.binarize),
                "data.binarize is for grey images (a Bernoulli likelihood), not data.mode RGB; set data.binarize: false "
                "(and model.decoder.likelihood: discretized_logistic)")
        for key in ("limit_train", "limit_test"):
            value = getattr(self, key)
            require(value is None or value >= 0, f"data.{key} must be ≥ 0 or null (the whole split), got {value}")


# Images sample with the common section only.
ImageSampleConfig = SampleConfig


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
    """``evaluate.classifier``: the in-domain classifier whose penultimate features FD and
    precision/recall are measured in (read by the ``classifier`` stage; docs/image.md)."""

    # 3 epochs reach 88 % test accuracy on Fashion-MNIST (measured 2026-12-03; docs/image.md).
    epochs: int = 3
    batch_size: int = 128
    lr: float = 1e-3
    # Channels of the first conv block (the second and third have 2× and 4×).
    width: int = 32
    # Size of the penultimate layer: the feature vectors' dimension D (FD fits a D × D covariance).
    feature_dim: int = 128

    def __post_init__(self) -> None:
        require_positive("evaluate.classifier", epochs=self.epochs, batch_size=self.batch_size, width=self.width,
                         feature_dim=self.feature_dim)
        require(self.lr > 0, f"evaluate.classifier.lr must be > 0, got {self.lr}")


@dataclasses.dataclass(frozen=True)
class ImageEvaluateConfig(EvaluateConfig):
    """``evaluate`` for images: the common keys plus the sample-quality metrics (FD, precision, recall)."""

    # Model samples scored against the test set; the training-set reference uses as many training images.
    n_fd_samples: int = 10_000
    # The k-th nearest neighbour that sets each ball's radius in precision/recall (Kynkäänniemi et al. 2019).
    pr_k: int = 3
    # Standard deviation in pixels of the Gaussian blur of the blurred-test-set reference point.
    blur_sigma: float = 1.0
    classifier: ClassifierConfig = ClassifierConfig()

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.n_fd_samples > self.pr_k >= 1,
                f"evaluate.n_fd_samples ({self.n_fd_samples}) must exceed evaluate.pr_k ({self.pr_k}) ≥ 1: "
                "each point's radius is its pr_k-th neighbour among the others")
        require(self.blur_sigma > 0, f"evaluate.blur_sigma must be > 0, got {self.blur_sigma}")
