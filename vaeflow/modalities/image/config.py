"""The image modality's own config sections: what its data side, task side and ``stages`` read."""

from __future__ import annotations

import dataclasses
from typing import Literal

from vaeflow.config import DataConfig, EvaluateConfig, SampleConfig, require


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


# Images sample and evaluate with the common sections only.
ImageSampleConfig = SampleConfig
ImageEvaluateConfig = EvaluateConfig
