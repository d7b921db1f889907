"""Your own images (data.source: files): formats, modes, resizing, quarantine, one-line errors, the
models at several sizes, the discretised-logistic likelihood, bits/dim, and the whole pipeline on
the RGB example photos."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vaeflow import config as cfg
from vaeflow import stages
from vaeflow.cli import main
from vaeflow.config import ModelConfig, ModuleSpec
from vaeflow.models.decoders.conv2d import discretized_logistic_log_prob
from vaeflow.models.vae import build_model

ROOT = Path(__file__).resolve().parents[1]
FILES = ROOT / "configs/image/files.yaml"
EXAMPLES = ROOT / "examples/image"


def _prepare(tmp: Path, path: Path, *sets: str) -> tuple[dict, Path]:
    config = cfg.load(FILES, overrides=[f"data.path={path}", "data.image_size=null", "data.crop=none",
                                        "data.mode=auto", "data.min_size=8", *sets])
    paths = stages.Paths.for_modality("image", tmp / "project")
    return stages.prepare(config, paths, progress=False), paths.processed


def _all(processed: Path) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = zip(*((np.load(processed / f"{s}.npz")["x"], np.load(processed / f"{s}.npz")["y"])
                   for s in ("train", "val", "test")))
    return np.concatenate(xs), np.concatenate(ys)


def _rgb(seed: int, size: tuple[int, int] = (20, 16)) -> np.ndarray:
    """(H, W, 3) uint8 of a random colour image; size is (width, height)."""
    return np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


def _rejects(processed: Path) -> list[dict[str, str]]:
    with open(processed / "rejects.csv", newline="") as f:
        return list(csv.DictReader(f))


# --- formats ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", ["png", "jpg", "bmp", "tiff"])
def test_a_folder_of_each_format_gives_sorted_classes_as_labels(tmp_path, ext):
    folder = tmp_path / "photos"
    originals = {}
    for cls, n in (("zebra", 4), ("apple", 6)):  # sorted: apple → 0, zebra → 1
        (folder / cls).mkdir(parents=True)
        for i in range(n):
            arr = _rgb(hash((cls, i)) % 1000)
            Image.fromarray(arr).save(folder / cls / f"{i}.{ext}")
            originals[(cls, i)] = arr
    counts, processed = _prepare(tmp_path, folder)
    assert (counts["n_train"], counts["n_val"], counts["n_test"], counts["rejected"]) == (8, 1, 1, 0)
    spec = json.loads((processed / "spec.json").read_text())
    assert spec["class_names"] == ["apple", "zebra"] and spec["num_classes"] == 2
    assert (spec["channels"], spec["height"], spec["width"]) == (3, 16, 20)
    x, y = _all(processed)
    assert x.shape == (10, 3, 16, 20) and x.dtype == np.uint8 and sorted(y.tolist()) == [0] * 6 + [1] * 4
    if ext != "jpg":  # lossless formats: every stored image is one of the files, under its class's label
        stored = {(int(label), img.tobytes()) for img, label in zip(x, y)}
        expected = {(0 if cls == "apple" else 1, arr.transpose(2, 0, 1).tobytes()) for (cls, _), arr in originals.items()}
        assert stored == expected


def test_a_folder_without_subfolders_is_unlabelled(tmp_path):
    for i in range(5):
        Image.fromarray(_rgb(i)).save(tmp_path / f"{i}.png")
    counts, processed = _prepare(tmp_path, tmp_path)
    spec = json.loads((processed / "spec.json").read_text())
    assert spec["num_classes"] == 0 and counts["n_train"] + counts["n_val"] + counts["n_test"] == 5
    with pytest.raises(cfg.ConfigError, match="no class labels"):  # a conditional model needs labels
        stages._check_model_builds(cfg.load(FILES, overrides=["model.conditional=true"]),
                                   stages._modality(cfg.load(FILES)), processed)


def test_npz_with_labels_and_npy_without(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (10, 12, 12, 3), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", images=x, labels=np.arange(10) % 3)
    counts, processed = _prepare(tmp_path / "1", tmp_path / "a.npz")
    got, y = _all(processed)
    assert got.shape == (10, 3, 12, 12) and sorted(y.tolist()) == sorted((np.arange(10) % 3).tolist())
    assert {img.tobytes() for img in got} == {img.transpose(2, 0, 1).tobytes() for img in x}
    assert json.loads((processed / "spec.json").read_text())["num_classes"] == 3

    # Floats in [0, 1], (N, H, W), keys x / y.
    f = rng.random((10, 9, 9))
    np.savez(tmp_path / "b.npz", x=f, y=np.zeros(10, dtype=np.int64))
    _, processed = _prepare(tmp_path / "2", tmp_path / "b.npz")
    got, _ = _all(processed)
    assert got.shape == (10, 1, 9, 9)
    assert {img.tobytes() for img in got} == {np.round(im * 255).astype(np.uint8)[None].tobytes() for im in f}

    np.save(tmp_path / "c.npy", x)
    _, processed = _prepare(tmp_path / "3", tmp_path / "c.npy")
    assert json.loads((processed / "spec.json").read_text())["num_classes"] == 0
    assert _all(processed)[0].shape == (10, 3, 12, 12)


def test_the_example_files_prepare_as_three_rgb_classes(tmp_path):
    counts, processed = _prepare(tmp_path / "a", EXAMPLES / "photos", "data.image_size=32", "data.crop=center")
    spec = json.loads((processed / "spec.json").read_text())
    assert spec["class_names"] == ["china", "flower", "hopper"] and spec["channels"] == 3
    assert counts["rejected"] == 0 and sum(counts[f"n_{s}"] for s in ("train", "val", "test")) == 120
    # The array format on the same photos: the first 8 of each class stacked into one .npz.
    from PIL import Image

    classes = sorted(p.name for p in (EXAMPLES / "photos").iterdir())
    files = [(c, f) for c in classes for f in sorted((EXAMPLES / "photos" / c).glob("*.png"))[:8]]
    np.savez(tmp_path / "photos.npz", images=np.stack([np.asarray(Image.open(f)) for _, f in files]),
             labels=np.asarray([classes.index(c) for c, _ in files], dtype=np.int64))
    counts, processed = _prepare(tmp_path / "b", tmp_path / "photos.npz")
    assert sum(counts[f"n_{s}"] for s in ("train", "val", "test")) == 24
    size = sum(p.stat().st_size for p in EXAMPLES.rglob("*") if p.is_file())
    assert size < 1_000_000


# --- grey / RGB, resize / crop --------------------------------------------------------------------


def test_grey_stays_grey_rgb_data_mode_converts_and_auto_takes_rgb_for_mixed(tmp_path):
    folder = tmp_path / "grey"
    folder.mkdir()
    grey = [np.random.default_rng(i).integers(0, 256, (10, 10), dtype=np.uint8) for i in range(5)]
    for i, g in enumerate(grey):
        Image.fromarray(g, "L").save(folder / f"{i}.png")
    _, processed = _prepare(tmp_path / "a", folder)
    x, _ = _all(processed)
    assert x.shape == (5, 1, 10, 10) and {i.tobytes() for i in x} == {g[None].tobytes() for g in grey}

    _, processed = _prepare(tmp_path / "b", folder, "data.mode=RGB")
    x, _ = _all(processed)
    assert x.shape == (5, 3, 10, 10) and (x[:, 0] == x[:, 1]).all() and (x[:, 1] == x[:, 2]).all()

    colour = np.zeros((10, 10, 3), np.uint8)
    colour[..., 0] = 255  # pure red
    Image.fromarray(colour).save(folder / "red.png")
    _, processed = _prepare(tmp_path / "c", folder)
    assert _all(processed)[0].shape == (6, 3, 10, 10)
    _, processed = _prepare(tmp_path / "d", folder, "data.mode=L")
    x, _ = _all(processed)
    assert x.shape == (6, 1, 10, 10) and 76 in {int(i.max()) for i in x if (i == i.flat[0]).all()}  # luma of red: 0.299 · 255


def test_resize_and_center_crop(tmp_path):
    # 40 × 20 (W × H): blue | green (the middle 20 columns) | red.
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :10, 2], arr[:, 10:30, 1], arr[:, 30:, 0] = 255, 255, 255
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(5):
        Image.fromarray(arr).save(folder / f"{i}.png")
    _, processed = _prepare(tmp_path / "a", folder, "data.image_size=10", "data.crop=center")
    x, _ = _all(processed)
    assert x.shape == (5, 3, 10, 10)
    centre = x[0].astype(float)
    assert centre[1].mean() > 240 and centre[0].mean() < 15 and centre[2].mean() < 15  # only the green square is left
    _, processed = _prepare(tmp_path / "b", folder, "data.image_size=10")
    squeezed = _all(processed)[0][0].astype(float)
    assert squeezed.shape == (3, 10, 10) and squeezed[2, :, 0].mean() > 200 and squeezed[0, :, -1].mean() > 200


def test_different_sizes_without_image_size_is_one_line(tmp_path):
    Image.fromarray(_rgb(0, (10, 10))).save(tmp_path / "a.png")
    Image.fromarray(_rgb(1, (12, 10))).save(tmp_path / "b.png")
    with pytest.raises(cfg.ConfigError, match="different sizes.*data.image_size"):
        _prepare(tmp_path / "p", tmp_path)


# --- quarantine -------------------------------------------------------------------------------------


def _png_bytes(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, format="PNG")
    return buf.getvalue()


def test_each_bad_record_is_quarantined_with_its_reason_and_counted(tmp_path):
    folder = tmp_path / "photos"
    good, odd = folder / "good", folder / "odd"
    good.mkdir(parents=True)
    odd.mkdir()
    for i in range(6):
        Image.fromarray(_rgb(i, (16, 16))).save(good / f"{i}.png")
    (odd / "truncated.png").write_bytes(_png_bytes(_rgb(10, (64, 64)))[:400])
    (odd / "text.png").write_text("not an image\n")
    (odd / "notes.txt").write_text("hello\n")
    Image.fromarray(_rgb(11, (16, 16))).convert("CMYK").save(odd / "cmyk.jpg")
    Image.fromarray(np.full((16, 16), 40000, np.uint16)).save(odd / "deep.png")  # 16-bit grey
    Image.fromarray(np.dstack([_rgb(12, (16, 16)), np.full((16, 16), 128, np.uint8)]), "RGBA").save(odd / "alpha.png")
    Image.fromarray(_rgb(13, (4, 4))).save(odd / "small.png")
    Image.fromarray(_rgb(14, (16, 16))).save(odd / "kept.png")
    (folder / "stray.png").write_bytes(_png_bytes(_rgb(15, (16, 16))))  # beside the class folders

    counts, processed = _prepare(tmp_path, folder)
    reasons = {r["file"]: r["reason"] for r in _rejects(processed)}
    assert reasons == {"odd/truncated.png": "unreadable", "odd/text.png": "not_image", "odd/notes.txt": "not_image",
                       "odd/cmyk.jpg": "mode", "odd/deep.png": "bit_depth", "odd/alpha.png": "alpha",
                       "odd/small.png": "too_small", "stray.png": "not_image"}
    assert counts["rejected"] == 8 and sum(counts[f"n_{s}"] for s in ("train", "val", "test")) == 7
    assert {k: v for k, v in counts.items() if k.startswith("rejected_")} == {
        "rejected_unreadable": 1, "rejected_not_image": 3, "rejected_mode": 1, "rejected_bit_depth": 1,
        "rejected_alpha": 1, "rejected_too_small": 1}
    assert all(r["detail"] for r in _rejects(processed))

    # data.alpha: drop keeps the RGBA file (its colours as they were); data.min_size: 4 keeps the small one
    # (which then needs a common size).
    counts, processed = _prepare(tmp_path / "2", folder, "data.alpha=drop")
    assert counts["rejected_alpha"] == 0 and counts["rejected"] == 7
    x, _ = _all(processed)
    assert any(img.transpose(1, 2, 0).tobytes() == _rgb(12, (16, 16)).tobytes() for img in x)
    counts, _ = _prepare(tmp_path / "3", folder, "data.min_size=4", "data.image_size=16")
    assert counts["rejected_too_small"] == 0


def test_prepare_returns_the_counts_as_the_metrics_file(tmp_path):
    Image.fromarray(_rgb(0)).save(tmp_path / "0.png")
    (tmp_path / "bad.png").write_text("x")
    for i in range(1, 5):
        Image.fromarray(_rgb(i)).save(tmp_path / f"{i}.png")
    counts, _ = _prepare(tmp_path / "p", tmp_path)
    written = json.loads((tmp_path / "p/project/metrics/image/prepare.json").read_text())
    assert written == counts and written["rejected"] == 1


# --- what cannot be read at all: one line, exit code 2 ------------------------------------------------


def _cli(tmp: Path, path: Path, *sets: str) -> tuple[int, str]:
    import contextlib

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["prepare", "--modality", "image", "--preset", str(FILES), "--root", str(tmp / "project"),
                   "--no-progress", "--set", f"data.path={path}", *[a for s in sets for a in ("--set", s)]])
    return rc, err.getvalue()


def _bad_files(tmp: Path) -> dict[str, tuple[Path, str]]:
    (tmp / "empty").mkdir()
    (tmp / "emptyclass" / "a").mkdir(parents=True)
    (tmp / "table.csv").write_text("a,b\n1,2\n")
    np.savez(tmp / "nokey.npz", foo=np.zeros((3, 8, 8)), bar=np.zeros(3))
    np.save(tmp / "range.npy", np.full((3, 8, 8), 300, np.int64))
    np.save(tmp / "float.npy", np.full((3, 8, 8), 2.0))
    np.save(tmp / "shape.npy", np.zeros((3, 8), np.uint8))
    np.save(tmp / "dtype.npy", np.full((3, 8, 8), "a"))
    (tmp / "broken.npz").write_bytes(b"PK\x03\x04 nothing")
    (tmp / "allbad").mkdir()
    (tmp / "allbad" / "x.png").write_text("nope")
    return {
        "missing": (tmp / "nowhere", "does not exist"),
        "empty folder": (tmp / "empty", "empty folder"),
        "empty class": (tmp / "emptyclass", "holds no files"),
        "wrong format": (tmp / "table.csv", "neither a folder"),
        "npz without the key": (tmp / "nokey.npz", "no image array"),
        "integers out of range": (tmp / "range.npy", "outside 0–255"),
        "floats out of range": (tmp / "float.npy", r"outside \[0, 1\]"),
        "wrong shape": (tmp / "shape.npy", "expected"),
        "wrong dtype": (tmp / "dtype.npy", "not supported"),
        "unreadable npz": (tmp / "broken.npz", "not a readable"),
        "nothing usable": (tmp / "allbad", "none of its 1 files"),
    }


def test_each_unreadable_input_stops_prepare_in_one_line(tmp_path):
    import re

    for case, (path, expected) in _bad_files(tmp_path).items():
        rc, err = _cli(tmp_path, path)
        assert rc == 2, case
        assert err.count("\n") == 1 and "Traceback" not in err, (case, err)
        assert re.search(expected, err) and path.name in err, (case, err)
    assert not (tmp_path / "project/data/processed/image").exists()  # nothing half-written


def test_rgb_with_binarize_is_one_line_and_keeps_the_previous_output(tmp_path):
    rc, _ = _cli(tmp_path, EXAMPLES / "photos")
    assert rc == 0
    spec = (tmp_path / "project/data/processed/image/spec.json").read_text()
    rc, err = _cli(tmp_path, EXAMPLES / "photos", "data.mode=auto", "data.binarize=true")
    assert rc == 2 and err.count("\n") == 1 and "data.binarize" in err
    rc, err = _cli(tmp_path, tmp_path / "nowhere")
    assert rc == 2 and (tmp_path / "project/data/processed/image/spec.json").read_text() == spec
    with pytest.raises(cfg.ConfigError, match="data.binarize"):
        cfg.load(FILES, overrides=["data.binarize=true"])  # data.mode RGB: caught with the config


# --- models at the sizes users bring ------------------------------------------------------------------


@pytest.mark.parametrize("likelihood, scale", [("bernoulli", "channel"), ("gaussian", "channel"), ("gaussian", "pixel"),
                                               ("discretized_logistic", "channel"), ("discretized_logistic", "pixel")])
@pytest.mark.parametrize("c, h, w", [(1, 28, 28), (3, 32, 32), (3, 64, 64)])
def test_encoder_and_decoder_take_channels_and_size_from_the_spec(c, h, w, likelihood, scale):
    spec = {"channels": c, "height": h, "width": w, "num_classes": 0}
    torch.manual_seed(0)
    decoder = {"channels": [8, 4], "hidden": 16, "likelihood": likelihood, "scale": scale}
    model = build_model(ModelConfig(latent_dim=4, encoder=ModuleSpec("conv2d", {"channels": [4, 8], "hidden": 16}),
                                    decoder=ModuleSpec("conv2d", decoder)), spec)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (3, c, h, w), generator=g).float() / 255
    out = model(x, None, target=x, generator=g)
    assert out.z.shape == (3, 4)
    assert model.decoder.mean(out.decoded).shape == (3, c, h, w)
    lp = model.decoder.log_prob(out.decoded, x)
    assert lp.shape == (3,) and torch.isfinite(lp).all()
    if likelihood != "bernoulli":
        assert out.decoded.scale.shape == ((3, c, h, w) if scale == "pixel" else (1, c, 1, 1))
    drawn = model.decoder.generate(out.decoded, g, mean=False)
    assert drawn.shape == (3, c, h, w) and drawn.min() >= 0 and drawn.max() <= 1
    if likelihood == "discretized_logistic":
        assert torch.equal(drawn, torch.round(drawn * 255) / 255)  # draws are 8-bit values
    # k posterior samples at once (as the IWAE bound decodes them): one log-likelihood per sample and image.
    zk = torch.randn(5, 3, 4, generator=g)
    folded = model.decode(zk)
    lp_k = model.decoder.log_prob(folded, x)
    assert lp_k.shape == (5, 3) and torch.allclose(lp_k[2], model.decoder.log_prob(model.decode(zk[2]), x), atol=1e-3)


# --- the discretised logistic and bits/dim ------------------------------------------------------------


def _sigmoid(t: float) -> float:
    return 1 / (1 + math.exp(-t))


@pytest.mark.parametrize("mean, scale", [(0.5, 0.05), (0.1, 0.002), (0.97, 0.3), (0.4, 5.0)])
def test_discretized_logistic_is_the_mass_of_each_bin(mean, scale):
    k = torch.arange(256, dtype=torch.float64)
    lp = discretized_logistic_log_prob(k / 255, torch.tensor(mean, dtype=torch.float64),
                                       torch.tensor(math.log(scale), dtype=torch.float64))
    assert torch.isfinite(lp).all() and (lp <= 0).all()
    assert float(lp.exp().sum()) == pytest.approx(1.0, abs=1e-9)  # the 256 masses sum to one
    cdf = lambda v: _sigmoid((v - mean) / scale)  # noqa: E731
    for i in (0, 1, 37, 128, 254, 255):
        lo = 0.0 if i == 0 else cdf((i - 0.5) / 255)
        hi = 1.0 if i == 255 else cdf((i + 0.5) / 255)
        if hi - lo > 1e-9:
            assert float(lp[i].exp()) == pytest.approx(hi - lo, rel=1e-6)
        else:  # deep in a tail, where the difference of CDFs cancels to 0 in float64
            assert float(lp[i].exp()) < 1e-9


def test_discretized_logistic_gradients_are_finite_in_the_tails():
    mean = torch.tensor([0.0, 1.0, 0.5, 0.02], requires_grad=True)
    log_scale = torch.full((4,), math.log(1e-4), requires_grad=True)
    x = torch.tensor([1.0, 0.0, 0.0, 1.0])  # every value far in its logistic's tail
    lp = discretized_logistic_log_prob(x, mean, log_scale)
    lp.sum().backward()
    assert torch.isfinite(lp).all() and torch.isfinite(mean.grad).all() and torch.isfinite(log_scale.grad).all()


def test_bits_per_dim():
    spec = {"channels": 3, "height": 8, "width": 8}
    make = lambda lik: build_model(ModelConfig(latent_dim=2, decoder=ModuleSpec("conv2d", {"channels": [4], "likelihood": lik})), spec).decoder  # noqa: E731
    d = 3 * 8 * 8
    # The uniform code of 8-bit values: 8 bits for each of the D sub-pixels.
    assert make("discretized_logistic").bits_per_dim(d * math.log(256)) == pytest.approx(8.0)
    assert make("discretized_logistic").bits_per_dim(1234.5) == pytest.approx(1234.5 / (d * math.log(2)))
    # A density on [0, 1] at x = k/255: bin mass ≈ p(x)/255, so −log P = NLL + D ln 255.
    assert make("gaussian").bits_per_dim(-d * math.log(255)) == pytest.approx(0.0, abs=1e-9)
    assert make("gaussian").bits_per_dim(0.0) == pytest.approx(math.log2(255))
    assert make("bernoulli").bits_per_dim(100.0) is None


def test_pixel_scales_need_a_likelihood_with_a_scale():
    with pytest.raises(ValueError, match="scale: pixel"):
        build_model(ModelConfig(decoder=ModuleSpec("conv2d", {"scale": "pixel"})), {"channels": 1, "height": 8, "width": 8})


# --- the whole pipeline on the RGB examples -------------------------------------------------------------


# About 30 s (a Ray fit and IWAE): -m slow, to keep the default suite within 10 minutes.
@pytest.mark.slow
def test_rgb_photos_train_sample_and_evaluate_through_the_cli(tmp_path, monkeypatch, ray_cluster):
    """prepare → train (Ray Train, 2 workers) → sample → evaluate on the example photos, one MLflow run."""
    import shutil

    from vaeflow import tracking

    shutil.copytree(EXAMPLES / "photos", tmp_path / "data/raw/image/photos")
    monkeypatch.chdir(tmp_path)
    sets = ["--set", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", "--set", f"tracking.artifact_location={tmp_path}/mlartifacts",
            "--set", "train.epochs=3", "--set", "evaluate.iwae_k=20"]
    for stage in ("prepare", "classifier", "train", "sample", "evaluate"):
        assert main([stage, "--modality", "image", "--preset", str(FILES), "--no-progress", *sets]) == 0, stage

    prepared = json.loads(Path("metrics/image/prepare.json").read_text())
    assert prepared["rejected"] == 0 and prepared["n_train"] == 96
    ev = json.loads(Path("metrics/image/evaluate.json").read_text())
    d = 3 * 32 * 32
    assert ev["test_bits_per_dim_iwae"] == pytest.approx(ev["test_nll_iwae"] / (d * math.log(2)))
    assert 0 < ev["test_bits_per_dim_iwae"] <= ev["test_bits_per_dim_neg_elbo"] + 1e-6
    # Samples in colour: the grid's channels differ.
    grid = np.asarray(Image.open("samples/image/prior_samples.png").convert("RGB")).astype(int)
    assert np.abs(grid[..., 0] - grid[..., 2]).mean() > 1
    samples = np.load("samples/image/samples.npz")["images"]
    assert samples.shape == (64, 3, 32, 32)

    config = cfg.load(FILES, overrides=[s for s in sets if s != "--set"])
    run = json.loads(Path("models/image/run.json").read_text())
    client = tracking.client(config.tracking)
    r = client.get_run(run["mlflow_run_id"])
    assert r.data.params["train.num_workers"] == "2" and r.data.params["data.source"] == "files"
    assert r.data.metrics["test_bits_per_dim_iwae"] == pytest.approx(ev["test_bits_per_dim_iwae"])
    assert len(client.get_metric_history(r.info.run_id, "val_neg_elbo")) == 3


def test_train_and_test_subfolders_keep_their_split(tmp_path):
    folder = tmp_path / "photos"
    for split, n in (("train", 6), ("test", 3)):
        for cls in ("cat", "dog"):
            (folder / split / cls).mkdir(parents=True)
            for i in range(n):
                value = {"train": 10, "test": 200}[split] + (cls == "dog")
                Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(folder / split / cls / f"{i}.png")
    counts, processed = _prepare(tmp_path, folder)
    assert (counts["n_train"], counts["n_val"], counts["n_test"]) == (11, 1, 6)  # val: 0.1 of train's 12
    test = np.load(processed / "test.npz")
    assert (test["x"] >= 200).all() and sorted(test["y"].tolist()) == [0, 0, 0, 1, 1, 1]
    assert (np.load(processed / "val.npz")["x"] < 200).all()
    assert json.loads((processed / "spec.json").read_text())["class_names"] == ["cat", "dog"]
    (folder / "test" / "bird").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "test" / "bird" / "0.png")
    with pytest.raises(cfg.ConfigError, match="'bird' is not in"):
        _prepare(tmp_path / "2", folder)
