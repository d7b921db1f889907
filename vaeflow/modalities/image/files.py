"""Your own images (``data.source: files``): a folder of image files or an ``.npz`` / ``.npy`` array.

A folder is read as torchvision's ``ImageFolder`` reads one: each subfolder is a class (sorted
names → indices 0, 1, …; files found at any depth below it), and a folder with no subfolders holds
unlabelled images. Files that cannot be used as configured are quarantined, each with its reason
(:data:`REASONS`); what cannot be read at all (no such path, an empty folder, a format that is
neither, an array of the wrong shape or range) raises :class:`~vaeflow.config.ConfigError` in one line.
"""

from __future__ import annotations

import dataclasses
import warnings
import zipfile
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from vaeflow.config import ConfigError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
ARRAY_EXTENSIONS = (".npz", ".npy")
# Why a file is quarantined (the reason column of rejects.csv; prepare counts each as rejected_<reason>).
REASONS = (
    "unreadable",    # truncated or corrupt: Pillow recognises the format but cannot decode it
    "not_image",     # not an image file (unknown extension, or content Pillow does not recognise)
    "mode",          # a pixel format with no faithful conversion to L or RGB (CMYK, LAB, HSV)
    "bit_depth",     # more than 8 bits per channel (16-bit grey, 32-bit integer or float)
    "alpha",         # an alpha channel while data.alpha is reject
    "too_small",     # shorter side below data.min_size
)
# Pillow modes stored as grey or as colour; alpha variants lose their alpha channel under data.alpha: drop.
_GREY = {"1", "L", "LA", "La"}
_COLOUR = {"RGB", "RGBA", "RGBa", "RGBX", "P", "PA", "YCbCr"}
_ALPHA = {"RGBA", "RGBa", "LA", "La", "PA"}
_DEEP = ("I", "F")  # I, I;16, I;16B, I;16L, I;16N, F
# Subfolders that name splits rather than classes (when train and test are both there).
SPLIT_DIRS = ("train", "val", "test")
# npz keys, in order of preference.
IMAGE_KEYS = ("images", "x")
LABEL_KEYS = ("labels", "y")


@dataclasses.dataclass(frozen=True)
class Reject:
    """One quarantined file: its name (relative to ``data.path``), reason (one of :data:`REASONS`), details."""

    file: str
    reason: str
    detail: str


@dataclasses.dataclass
class UserImages:
    """What :func:`read` found.

    Shapes:
        x: (N, C, H, W) uint8; y: (N,) int64 (0 where unlabelled)
    """

    x: np.ndarray
    y: np.ndarray
    class_names: list[str]
    labelled: bool
    rejects: list[Reject]
    # The split of each image where the folder gave one (train/ and test/ subfolders), else None.
    split: np.ndarray | None = None


def _resample() -> Any:
    from PIL import Image

    return Image.Resampling.LANCZOS


def _resize(im: Any, config: Any) -> Any:
    """The configured resize (and centre crop) of one Pillow image in mode L or RGB."""
    from PIL import ImageOps

    if config.image_size is None:
        return im
    size = (config.image_size, config.image_size)
    if config.crop == "center":
        return ImageOps.fit(im, size, method=_resample(), centering=(0.5, 0.5))
    return im.resize(size, _resample())


def _open_one(path: Path, config: Any) -> tuple[np.ndarray | None, str, str]:
    """One image file → (pixels (H, W) or (H, W, 3) uint8 after resizing, "", "") or (None, reason, detail)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. Pillow's DecompressionBombWarning, EXIF warnings
            with Image.open(path) as im:
                im.load()  # decode now: a truncated file fails here, not later
                mode = im.mode
                has_alpha = mode in _ALPHA or "transparency" in im.info
                if mode.startswith(_DEEP):
                    return None, "bit_depth", f"mode {mode} has more than 8 bits per channel; save it as 8-bit"
                if mode not in _GREY and mode not in _COLOUR:
                    return None, "mode", (f"mode {mode} has no faithful conversion to L or RGB "
                                          "(it needs a colour profile); save it as RGB")
                if has_alpha and config.alpha == "reject":
                    return None, "alpha", f"mode {mode} has an alpha channel; set data.alpha: drop to discard it"
                if min(im.size) < config.min_size:
                    return None, "too_small", f"{im.size[0]}x{im.size[1]} is below data.min_size {config.min_size}"
                target = "L" if mode in _GREY else "RGB"
                if has_alpha:  # data.alpha: drop; convert via the alpha mode so a palette's colours survive
                    im = im.convert("LA" if target == "L" else "RGBA")
                return np.asarray(_resize(im.convert(target), config), dtype=np.uint8), "", ""
    except UnidentifiedImageError:
        return None, "not_image", "not an image file that Pillow recognises"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return None, "unreadable", f"cannot be decoded ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"


def _to_mode(pixels: list[np.ndarray], mode: str) -> np.ndarray:
    """Grey (H, W) and colour (H, W, 3) arrays → (N, C, H, W) uint8 in ``mode`` (L or RGB)."""
    from PIL import Image

    out = []
    for p in pixels:
        if mode == "L" and p.ndim == 3:
            p = np.asarray(Image.fromarray(p, "RGB").convert("L"))  # ITU-R 601-2 luma
        if mode == "RGB" and p.ndim == 2:
            p = np.repeat(p[..., None], 3, axis=-1)  # (H, W) → (H, W, 3)
        out.append(p[None] if p.ndim == 2 else p.transpose(2, 0, 1))  # → (C, H, W)
    return np.stack(out)


def _check_sizes(pixels: list[np.ndarray], where: str) -> None:
    sizes = Counter(f"{p.shape[1]}x{p.shape[0]}" for p in pixels)
    if len(sizes) > 1:
        listed = ", ".join(f"{s} ({n} images)" for s, n in sizes.most_common(3))
        raise ConfigError(f"{where}: the images have different sizes ({listed}{', …' if len(sizes) > 3 else ''}); "
                          "set data.image_size (and data.crop: center to keep the aspect ratio) to resize them")


def _resolve_mode(config: Any, pixels: list[np.ndarray]) -> str:
    if config.mode != "auto":
        return config.mode
    return "RGB" if any(p.ndim == 3 for p in pixels) else "L"


def _class_files(folder: Path, classes: list[str], root: Path) -> tuple[list[tuple[Path, int]], list[Reject]]:
    """The files of one folder: those in each class subfolder (any depth) under its index, or, without
    classes, those directly in it; files beside the class folders are quarantined (they have no class)."""
    if not classes:
        return [(e, 0) for e in sorted(folder.iterdir()) if e.is_file()], []
    files: list[tuple[Path, int]] = []
    for i, name in enumerate(classes):
        if not (folder / name).is_dir():
            continue  # a split may lack a class the training split has
        found = sorted(p for p in (folder / name).rglob("*") if p.is_file())
        if not found:
            raise ConfigError(f"{folder / name}: class folder '{name}' holds no files; add images to it or remove it")
        files += [(p, i) for p in found]
    rejects = [Reject(e.relative_to(root).as_posix(), "not_image",
                      "a file beside the class folders has no class; move it into one of them")
               for e in sorted(folder.iterdir()) if e.is_file()]
    return files, rejects


def read_folder(root: Path, config: Any) -> UserImages:
    """A folder of image files: class subfolders (sorted) become labels; no subfolders, unlabelled.

    A folder holding exactly ``train/`` and ``test/`` (and optionally ``val/``) keeps that split: the
    class subfolders of ``train/`` name the classes, and the other splits may only use those.
    """
    entries = sorted(root.iterdir())
    dirs = [e.name for e in entries if e.is_dir()]
    split_dirs = {"train", "test"} <= set(dirs) and set(dirs) <= set(SPLIT_DIRS)
    tops = [(root / d, d) for d in SPLIT_DIRS if d in dirs] if split_dirs else [(root, None)]
    classes = sorted(e.name for e in (root / "train").iterdir() if e.is_dir()) if split_dirs else dirs
    files: list[tuple[Path, int, str | None]] = []
    rejects: list[Reject] = []
    for folder, split in tops:
        if split_dirs:
            extra = sorted({e.name for e in folder.iterdir() if e.is_dir()} - set(classes))
            if extra:
                raise ConfigError(f"{folder}: class folder '{extra[0]}' is not in {root / 'train'} (classes: "
                                  f"{', '.join(classes) or 'none'}); every class needs training images")
        found, stray = _class_files(folder, classes, root)
        files += [(p, label, split) for p, label in found]
        rejects += stray
    if split_dirs:
        rejects += [Reject(e.name, "not_image", "a file beside train/ and test/ belongs to no split; move it into one")
                    for e in entries if e.is_file()]
    if not files:
        raise ConfigError(f"data.path {root} is an empty folder; put your images in it (one subfolder per class), "
                          "e.g. cp -r examples/image/photos data/raw/image/")
    pixels: list[np.ndarray] = []
    labels: list[int] = []
    splits: list[str | None] = []
    for path, label, split in files:
        name = path.relative_to(root).as_posix()
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            rejects.append(Reject(name, "not_image", f"extension {path.suffix or '(none)'} is not one of "
                                  f"{' '.join(IMAGE_EXTENSIONS)}"))
            continue
        p, reason, detail = _open_one(path, config)
        if p is None:
            rejects.append(Reject(name, reason, detail))
            continue
        pixels.append(p)
        labels.append(label)
        splits.append(split)
    if not pixels:
        top = Counter(r.reason for r in rejects).most_common(1)[0][0]
        example = next(r for r in rejects if r.reason == top)
        raise ConfigError(f"data.path {root}: none of its {len(files)} files can be used (most: {top}, e.g. "
                          f"{example.file}: {example.detail}); fix them or the data options")
    _check_sizes(pixels, f"data.path {root}")
    x = _to_mode(pixels, _resolve_mode(config, pixels))
    return UserImages(x=x, y=np.asarray(labels, dtype=np.int64), class_names=classes or ["unlabelled"],
                      labelled=bool(classes), rejects=rejects,
                      split=np.asarray(splits) if split_dirs else None)


def _array_key(arrays: Any, keys: tuple[str, ...], path: Path, what: str, *, required: bool) -> str | None:
    for key in keys:
        if key in arrays.files:
            return key
    if required and len(arrays.files) == 1:
        return arrays.files[0]
    if required:
        raise ConfigError(f"{path}: no {what} array under {' or '.join(repr(k) for k in keys)} (it holds: "
                          f"{', '.join(arrays.files) or 'nothing'}); save them with np.savez(path, images=…, labels=…)")
    return None


def _as_uint8(x: np.ndarray, path: Path) -> np.ndarray:
    """uint8 as is; other integers within 0–255; floats within [0, 1] (scaled by 255 and rounded)."""
    if x.dtype == np.uint8:
        return x
    if np.issubdtype(x.dtype, np.integer) and x.dtype != np.bool_:
        lo, hi = (int(x.min()), int(x.max())) if x.size else (0, 0)
        if lo < 0 or hi > 255:
            raise ConfigError(f"{path}: {x.dtype} pixel values span {lo}…{hi}, outside 0–255; save 8-bit values "
                              "(uint8 0–255) or floats in [0, 1]")
        return x.astype(np.uint8)
    if np.issubdtype(x.dtype, np.floating):
        if not np.isfinite(x).all():
            raise ConfigError(f"{path}: the pixel values include NaN or infinity; replace them before preparing")
        lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
        if lo < 0 or hi > 1:
            raise ConfigError(f"{path}: float pixel values span {lo:g}…{hi:g}, outside [0, 1]; divide 8-bit values "
                              "by 255 (or save them as uint8)")
        return np.round(x * 255).astype(np.uint8)
    raise ConfigError(f"{path}: pixel dtype {x.dtype} is not supported; save uint8 (0–255) or float (0–1) values")


def read_array(path: Path, config: Any) -> UserImages:
    """An ``.npy`` array, or an ``.npz`` with images under ``images`` / ``x`` and optional labels under
    ``labels`` / ``y``; images of shape (N, H, W) or (N, H, W, C) with C = 1, 3 (or 4 with data.alpha: drop)."""
    labels = None
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            x = loaded
        else:
            with loaded as arrays:
                x = arrays[_array_key(arrays, IMAGE_KEYS, path, "image", required=True)]
                key = _array_key(arrays, LABEL_KEYS, path, "label", required=False)
                labels = None if key is None else arrays[key]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{path}: not a readable {path.suffix} file ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                          "save it with numpy.save / numpy.savez") from None
    if x.ndim == 3:
        x = x[..., None]  # (N, H, W) → (N, H, W, 1)
    if x.ndim != 4 or x.shape[-1] not in (1, 3, 4) or len(x) == 0:
        raise ConfigError(f"{path}: images of shape {x.shape}; expected (N, H, W) or (N, H, W, C) with C 1 or 3 "
                          "(channels last, N ≥ 1)")
    if x.shape[-1] == 4:
        if config.alpha == "reject":
            raise ConfigError(f"{path}: 4 channels (RGBA); set data.alpha: drop to discard the alpha channel, or save RGB")
        x = x[..., :3]
    x = _as_uint8(x, path)
    if min(x.shape[1:3]) < config.min_size:
        raise ConfigError(f"{path}: images of {x.shape[2]}x{x.shape[1]} are below data.min_size {config.min_size}; "
                          "lower data.min_size or use larger images")
    if labels is not None:
        if labels.shape != (len(x),) or not np.issubdtype(labels.dtype, np.integer) or (labels < 0).any():
            raise ConfigError(f"{path}: labels must be {len(x)} integers ≥ 0 (one per image), got {labels.dtype} "
                              f"of shape {labels.shape}")
    from PIL import Image

    grey = x.shape[-1] == 1
    pixels = [_resize(Image.fromarray(im[..., 0] if grey else im, "L" if grey else "RGB"), config) for im in x]
    pixels = [np.asarray(p, dtype=np.uint8) for p in pixels]
    out = _to_mode(pixels, _resolve_mode(config, pixels))
    n_classes = int(labels.max()) + 1 if labels is not None else 0
    return UserImages(x=out, y=np.zeros(len(out), np.int64) if labels is None else labels.astype(np.int64),
                      class_names=[str(i) for i in range(n_classes)] or ["unlabelled"],
                      labelled=labels is not None, rejects=[])


def read(config: Any) -> UserImages:
    """``data.path`` (a folder, an .npz or an .npy) as images, labels and the quarantined files."""
    path = Path(config.path)
    if not path.exists():
        raise ConfigError(f"data.path {path} does not exist; put your images there (e.g. cp -r examples/image/photos "
                          "data/raw/image/) or point data.path at them")
    if path.is_dir():
        return read_folder(path, config)
    if path.suffix.lower() in ARRAY_EXTENSIONS:
        return read_array(path, config)
    raise ConfigError(f"data.path {path} is neither a folder of images nor an .npz / .npy array file; point it at "
                      "the folder (one subfolder per class) or save the images with numpy.savez")
