"""Make the example images in examples/image/: photos/<class>/*.png.

Three photos that ship inside installed packages, one class each: scikit-learn's
``sklearn/datasets/images/china.jpg`` and ``flower.jpg`` and matplotlib's
``mpl-data/sample_data/grace_hopper.jpg``. From each, PER_CLASS square patches of a random side
(64 to 160 pixels) at random places are cut and scaled down to SIZE × SIZE RGB PNGs (seeded, so the
files are the same on every run).

    python examples/image/make_examples.py          # rewrites examples/image/photos/

Origins and licences: examples/image/README.md.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 32
PER_CLASS = 40
HERE = Path(__file__).resolve().parent


def sources() -> dict[str, Path]:
    """Class name → the photo it is cut from."""
    import matplotlib
    import sklearn

    images = Path(sklearn.__file__).parent / "datasets" / "images"
    return {
        "china": images / "china.jpg",
        "flower": images / "flower.jpg",
        "hopper": Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg",
    }


def patches(photo: Path, n: int, rng: np.random.Generator) -> list[Image.Image]:
    with Image.open(photo) as im:
        im = im.convert("RGB")
        out = []
        for _ in range(n):
            side = int(rng.integers(64, 161))
            left = int(rng.integers(0, im.width - side + 1))
            top = int(rng.integers(0, im.height - side + 1))
            box = (left, top, left + side, top + side)
            out.append(im.crop(box).resize((SIZE, SIZE), Image.Resampling.LANCZOS))
        return out


def main() -> None:
    rng = np.random.default_rng(0)
    root = HERE / "photos"
    if root.exists():
        shutil.rmtree(root)
    for name, photo in sorted(sources().items()):
        (root / name).mkdir(parents=True)
        for i, patch in enumerate(patches(photo, PER_CLASS, rng)):
            patch.save(root / name / f"{name}_{i:02d}.png", optimize=True)
    total = sum(p.stat().st_size for p in root.rglob("*.png"))
    print(f"{PER_CLASS * len(sources())} images of {SIZE}x{SIZE} in {root}, {total / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
