"""Image modality: MNIST-format data sets (Fashion-MNIST by default) or your own images → uint8 tensors.

Processed layout (``data/processed/image/``): ``train.npz``, ``val.npz``, ``test.npz`` each with
``x`` uint8 of shape (N, C, H, W) and ``y`` int64 labels, and ``spec.json`` (shape, classes); for
``data.source: files`` also ``rejects.csv`` (each quarantined file with its reason; ``files.py``).
Pixels stay grey in storage; binarisation happens per batch (dynamic binarisation, the standard
protocol for Bernoulli likelihoods: Salakhutdinov & Murray 2008, Burda et al. 2016).
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from vaeflow.config import ConfigError
from vaeflow.modalities.image.config import ImageDataConfig as DataConfig
from vaeflow.modalities.base import ModalityData, ModelInputs
from vaeflow.modalities.image import files
from vaeflow.download import RemoteFile, fetch
from vaeflow.idx import read_idx
from vaeflow.io import atomic_path
from vaeflow.registry import DATASETS
from vaeflow.splits import subset

SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class IdxImageDataset:
    """An MNIST-format data set: four IDX files and the class names."""

    train_images: RemoteFile
    train_labels: RemoteFile
    test_images: RemoteFile
    test_labels: RemoteFile
    class_names: tuple[str, ...]


def _files(folder: str, base_url: str, digests: dict[str, dict[str, str]]) -> dict[str, RemoteFile]:
    names = {
        "train_images": "train-images-idx3-ubyte.gz",
        "train_labels": "train-labels-idx1-ubyte.gz",
        "test_images": "t10k-images-idx3-ubyte.gz",
        "test_labels": "t10k-labels-idx1-ubyte.gz",
    }
    return {
        key: RemoteFile(folder=folder, name=name, url=base_url + name, **digests[key])
        for key, name in names.items()
    }


# sha256 of the decompressed IDX bytes: mirrors recompress the gz files, the content stays the same.
DATASETS.register("fashion-mnist")(
    IdxImageDataset(
        **_files(
            "fashion-mnist",
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            {
                "train_images": {"sha256": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"},
                "train_labels": {"sha256": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"},
                "test_images": {"sha256": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"},
                "test_labels": {"sha256": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"},
            },
        ),
        class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                     "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    )
)

DATASETS.register("mnist")(
    IdxImageDataset(
        **_files(
            "mnist",
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            {
                # Upstream publishes only the gz MD5 for the training images.
                "train_images": {"gz_md5": "f68b3c2dcbeaaa9fbdd348bbdeb94873"},
                "train_labels": {"sha256": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"},
                "test_images": {"sha256": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"},
                "test_labels": {"sha256": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"},
            },
        ),
        class_names=tuple(str(i) for i in range(10)),
    )
)


def load_idx_pair(images: RemoteFile, labels: RemoteFile) -> tuple[np.ndarray, np.ndarray]:
    """Fetch, verify and read one (images, labels) pair.

    Shapes:
        images: (N, 1, H, W) uint8; labels: (N,) int64.
    """
    x = read_idx(fetch(images))
    y = read_idx(fetch(labels)).astype(np.int64)
    if x.ndim != 3 or len(x) != len(y):
        raise ValueError(f"{images.name}/{labels.name}: {x.shape} images do not match {y.shape} labels")
    return x[:, None], y  # (N, H, W) → (N, 1, H, W)


class ImageDataset(torch.utils.data.Dataset):
    """In-memory uint8 images with labels; items are (image uint8 (C, H, W), label)."""

    def __init__(self, x: np.ndarray, y: np.ndarray):
        self.x = torch.from_numpy(np.ascontiguousarray(x))
        self.y = torch.from_numpy(np.ascontiguousarray(y))

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


def _write(out_dir: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]], spec: dict[str, Any],
           rejects: list[files.Reject] | None = None) -> None:
    """All of the processed folder at once (atomically: a failure leaves the previous one)."""
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for split, (x, y) in splits.items():
            np.savez(tmp / f"{split}.npz", x=x, y=y)
        (tmp / "spec.json").write_text(json.dumps(spec, indent=2) + "\n")
        if rejects is not None:
            with open(tmp / "rejects.csv", "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["file", "reason", "detail"])
                writer.writerows([r.file, r.reason, r.detail] for r in rejects)


def _spec(dataset: str, x: np.ndarray, class_names: list[str], num_classes: int) -> dict[str, Any]:
    _, channels, height, width = x.shape
    return {"dataset": dataset, "channels": int(channels), "height": int(height), "width": int(width),
            "num_classes": num_classes, "class_names": list(class_names)}


def prepare_files(config: DataConfig, seed: int, out_dir: Path) -> dict[str, Any]:
    """``data.source: files``: read ``data.path``, quarantine what cannot be used, split with the seed."""
    found = files.read(config)
    if found.x.shape[1] == 3 and config.binarize:
        raise ConfigError(f"data.path {config.path} holds RGB images but data.binarize is true (binarisation is for "
                          "grey images); set data.binarize: false and model.decoder.likelihood: discretized_logistic")
    rng = np.random.default_rng(seed)
    if found.split is None:
        n = len(found.y)
        n_val, n_test = (max(1, round(f * n)) for f in (config.val_fraction, config.test_fraction))
        if n - n_val - n_test < 1:
            raise ConfigError(f"data.path {config.path}: {n} usable images are too few for a train, val and test split "
                              f"(val {n_val}, test {n_test}); add images or lower data.val_fraction / data.test_fraction")
        order = rng.permutation(n)
        parts = {"val": order[:n_val], "test": order[n_val : n_val + n_test], "train": order[n_val + n_test :]}
    else:  # the folder's own train/ (val/) test/ split; without val/, data.val_fraction of train is held out
        parts = {split: np.flatnonzero(found.split == split) for split in SPLITS}
        if not len(parts["val"]):
            train = rng.permutation(parts["train"])
            n_val = max(1, round(config.val_fraction * len(train)))
            parts["val"], parts["train"] = train[:n_val], train[n_val:]
        empty = [split for split in SPLITS if not len(parts[split])]
        if empty:
            raise ConfigError(f"data.path {config.path}: no usable images in its {empty[0]} split; add images there "
                              "(see rejects in the quarantine reasons) or lower data.val_fraction")
    splits = {split: (found.x[np.sort(parts[split])], found.y[np.sort(parts[split])]) for split in SPLITS}
    spec = _spec("files", found.x, found.class_names, len(found.class_names) if found.labelled else 0)
    spec["path"] = str(config.path)
    _write(out_dir, splits, spec, found.rejects)
    by_reason = {f"rejected_{r}": sum(x.reason == r for x in found.rejects) for r in files.REASONS}
    return ({f"n_{split}": int(len(y)) for split, (_, y) in splits.items()}
            | {"rejected": len(found.rejects)} | by_reason)


class ImageData(ModalityData):
    def prepare(self, config: DataConfig, seed: int, out_dir: Path, *, progress: bool = True) -> dict[str, Any]:
        if config.source == "files":
            return prepare_files(config, seed, out_dir)
        source: IdxImageDataset = DATASETS.get_or_raise(config.dataset, "data.dataset")
        steps = tqdm(total=4, desc=f"prepare {config.dataset}", disable=not progress)
        x_train, y_train = load_idx_pair(source.train_images, source.train_labels)
        steps.update(2)
        x_test, y_test = load_idx_pair(source.test_images, source.test_labels)
        steps.update(2)
        steps.close()
        if not 0 <= config.val_size < len(y_train):
            raise ConfigError(f"data.val_size must be in [0, {len(y_train)}) for {config.dataset} "
                              f"({len(y_train)} training images), got {config.val_size}; lower it with --set data.val_size=…")
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(y_train))
        val_idx, train_idx = np.sort(order[: config.val_size]), np.sort(order[config.val_size :])
        train_idx = train_idx[subset(len(train_idx), config.limit_train, rng)]
        test_idx = subset(len(y_test), config.limit_test, rng)
        splits = {
            "train": (x_train[train_idx], y_train[train_idx]),
            "val": (x_train[val_idx], y_train[val_idx]),
            "test": (x_test[test_idx], y_test[test_idx]),
        }
        spec = _spec(config.dataset, x_train, list(source.class_names), len(source.class_names))
        _write(out_dir, splits, spec)
        return {f"n_{split}": int(len(y)) for split, (_, y) in splits.items()} | {"rejected": 0}

    def load(self, processed_dir: Path, split: str) -> ImageDataset:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")
        path = Path(processed_dir) / f"{split}.npz"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found; run the prepare stage first (dvc repro prepare@image)")
        with np.load(path) as f:
            return ImageDataset(f["x"], f["y"])

    def input_spec(self, processed_dir: Path) -> dict[str, Any]:
        path = Path(processed_dir) / "spec.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found; run the prepare stage first (dvc repro prepare@image)")
        return json.loads(path.read_text())

    def fixed(self, dataset: ImageDataset, config: DataConfig, seed: int) -> ImageDataset:
        if not config.binarize:
            return dataset
        g = torch.Generator().manual_seed(seed)
        binary = torch.bernoulli(dataset.x.float() / 255.0, generator=g).to(torch.uint8) * 255  # {0, 255}
        return ImageDataset(binary.numpy(), dataset.y.numpy())

    def model_inputs(
        self, batch: Any, config: DataConfig, *, train: bool, generator: torch.Generator | None
    ) -> ModelInputs:
        images, labels = batch
        x = images.float() / 255.0  # uint8 (N, C, H, W) → [0, 1]
        if config.binarize:
            # Fresh draws every step when training; evaluation passes a fixed-seed generator.
            x = torch.bernoulli(x, generator=generator)
        return ModelInputs(x=x, target=x, labels=labels)

    def example_input(self, dataset: ImageDataset, n: int) -> np.ndarray:
        return (dataset.x[:n].float() / 255.0).numpy()  # (n, C, H, W) float32 in [0, 1]
