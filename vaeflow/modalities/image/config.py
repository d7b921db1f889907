"""The image modality's own config sections: what its data side, task side and ``stages`` read."""

from __future__ import annotations

import dataclasses

from vaeflow.config import DataConfig, EvaluateConfig, SampleConfig, require


@dataclasses.dataclass(frozen=True)
class ImageDataConfig(DataConfig):
    """``data``: an MNIST-format data set (IDX files), its splits and the binarisation."""

    dataset: str = "fashion-mnist"
    # Held out from the official training split, chosen with the job seed, for keep-best and warm-up.
    val_size: int = 5000
    # Seeded subsets for quick and tiny runs; None keeps the whole split.
    limit_train: int | None = None
    limit_test: int | None = None
    # Dynamic binarisation of pixels (the standard protocol for Bernoulli likelihoods); read by
    # train and evaluate (model inputs), not by prepare.
    binarize: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.val_size >= 0, f"data.val_size must be ≥ 0, got {self.val_size}")
        for key in ("limit_train", "limit_test"):
            value = getattr(self, key)
            require(value is None or value >= 0, f"data.{key} must be ≥ 0 or null (the whole split), got {value}")


# Images sample and evaluate with the common sections only.
ImageSampleConfig = SampleConfig
ImageEvaluateConfig = EvaluateConfig
