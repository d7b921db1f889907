"""Download/verify resolution, the IDX reader, and the image prepare stage on real data."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from vaeflow import config as cfg
from vaeflow import download
from vaeflow.download import DataNotFoundError, RemoteFile
from vaeflow.idx import IdxFormatError, read_idx
from vaeflow.modalities.image.data import ImageData, load_idx_pair
from vaeflow.registry import DATASETS
from tests.conftest import TINY


def test_mnist_t10k_through_the_same_loader():
    mnist = DATASETS["mnist"]
    x, y = load_idx_pair(mnist.test_images, mnist.test_labels)
    assert x.shape == (10_000, 1, 28, 28) and x.dtype == np.uint8
    assert y.shape == (10_000,) and set(np.unique(y)) == set(range(10))
    assert 20 < x.mean() < 50  # MNIST digits: mostly black background


def test_fashion_mnist_full_splits_verify():
    fm = DATASETS["fashion-mnist"]
    x, y = load_idx_pair(fm.train_images, fm.train_labels)
    assert x.shape == (60_000, 1, 28, 28)
    assert np.bincount(y).tolist() == [6000] * 10


def _file(tmp_path, content: bytes, name="t.gz", **digests) -> RemoteFile:
    return RemoteFile(folder="toy", name=name, url="http://127.0.0.1:9/toy/" + name, **digests)


def test_mirror_then_cache_resolution_and_verification(tmp_path, monkeypatch):
    payload = b"\x00\x00\x08\x01" + (3).to_bytes(4, "big") + b"abc"
    import hashlib

    spec = _file(tmp_path, payload, sha256=hashlib.sha256(payload).hexdigest())
    mirror = tmp_path / "mirror"
    (mirror / "toy").mkdir(parents=True)
    with gzip.open(mirror / "toy" / "t.gz", "wb", compresslevel=1) as f:  # any compression: content counts
        f.write(payload)
    monkeypatch.setenv(download.MIRROR_ENV, str(mirror))
    assert download.fetch(spec, cache=tmp_path / "cache") == mirror / "toy" / "t.gz"
    assert read_idx(mirror / "toy" / "t.gz").tolist() == [97, 98, 99]

    # A corrupt mirror copy is rejected (named in the message), never used.
    with gzip.open(mirror / "toy" / "t.gz", "wb") as f:
        f.write(payload[:-1] + b"X")
    with pytest.raises(DataNotFoundError) as err:
        download.fetch(spec, cache=tmp_path / "cache")
    msg = str(err.value)
    assert "found but rejected" in msg and "sha256 of content" in msg
    assert str(tmp_path / "cache" / "toy" / "t.gz") in msg and download.MIRROR_ENV in msg
    assert "\n" not in msg


def test_missing_data_without_network_says_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv(download.MIRROR_ENV, str(tmp_path / "empty"))
    spec = _file(tmp_path, b"", sha256="0" * 64)
    with pytest.raises(DataNotFoundError, match=r"could not be downloaded from http://127\.0\.0\.1:9/toy/t\.gz .*Put the file at"):
        download.fetch(spec, cache=tmp_path / "cache")
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]  # no half-written file left behind


def test_gz_md5_fallback(tmp_path, monkeypatch):
    monkeypatch.setenv(download.MIRROR_ENV, str(tmp_path))
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "t.gz").write_bytes(b"hello")
    assert download.fetch(_file(tmp_path, b"", gz_md5="5d41402abc4b2a76b9719d911017c592"), cache=tmp_path) == tmp_path / "toy" / "t.gz"
    with pytest.raises(DataNotFoundError, match="md5 is"):
        download.fetch(_file(tmp_path, b"", gz_md5="0" * 32), cache=tmp_path)


def test_an_unreadable_copy_is_rejected_with_its_whole_reason(tmp_path, monkeypatch):
    monkeypatch.setenv(download.MIRROR_ENV, str(tmp_path / "mirror"))
    (tmp_path / "mirror" / "toy").mkdir(parents=True)
    (tmp_path / "mirror" / "toy" / "t.gz").write_bytes(b"hello, not gzip")
    with pytest.raises(DataNotFoundError) as err:
        download.fetch(_file(tmp_path, b"", sha256="0" * 64), cache=tmp_path / "cache")
    assert "t.gz: unreadable (Not a gzipped file (b'he'))" in str(err.value)  # was cut to "unreadable (Not…"


def test_subset_is_seeded_and_draws_nothing_when_keeping_everything():
    from vaeflow.splits import subset

    a, b = (subset(100, 10, np.random.default_rng(3)) for _ in range(2))
    assert a.tolist() == b.tolist() and len(set(a.tolist())) == 10 and a.tolist() == sorted(a.tolist())
    rng = np.random.default_rng(3)
    assert subset(100, None, rng).tolist() == subset(100, 100, rng).tolist() == list(range(100))
    assert rng.random() == np.random.default_rng(3).random()  # the generator was left untouched


def test_a_validation_split_larger_than_the_data_is_a_config_error(tmp_path):
    config = cfg.load(TINY, overrides=["data.val_size=60000"])
    with pytest.raises(cfg.ConfigError, match=r"data.val_size must be in \[0, 60000\) .*--set data.val_size"):
        ImageData().prepare(config.data, config.seed, tmp_path / "processed", progress=False)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x01\x02\x08\x01", "bad magic"),
        (b"\x00\x00\x07\x01" + (1).to_bytes(4, "big") + b"a", "unknown IDX type"),
        (b"\x00\x00\x08\x02" + (2).to_bytes(4, "big") + (2).to_bytes(4, "big") + b"abc", r"declares shape \(2, 2\).*truncated"),
    ],
)
def test_idx_rejects_malformed_files(tmp_path, data, message):
    path = tmp_path / "bad.idx"
    path.write_bytes(data)
    with pytest.raises(IdxFormatError, match=message):
        read_idx(path)


def test_truncated_gzip_is_a_clear_error(tmp_path):
    src = DATASETS["mnist"].test_labels
    path = tmp_path / "cut.gz"
    path.write_bytes(download.fetch(src).read_bytes()[:1000])
    with pytest.raises(IdxFormatError, match="cannot read"):
        read_idx(path)


def test_prepare_writes_disjoint_seeded_splits(tmp_path):
    config = cfg.load(TINY, overrides=["data.limit_train=300", "data.limit_test=100", "data.val_size=200"])
    out = tmp_path / "processed"
    counts = ImageData().prepare(config.data, config.seed, out, progress=False)
    assert counts == {"n_train": 300, "n_val": 200, "n_test": 100, "rejected": 0}
    spec = json.loads((out / "spec.json").read_text())
    assert spec["num_classes"] == 10 and spec["class_names"][9] == "Ankle boot"
    m = ImageData()
    train, val = m.load(out, "train"), m.load(out, "val")
    rows = lambda ds: {bytes(img.numpy()) for img in ds.x}  # noqa: E731
    assert not rows(train) & rows(val)  # validation is held out of training
    # Same seed → identical output; another seed → another split.
    again = tmp_path / "again"
    ImageData().prepare(config.data, config.seed, again, progress=False)
    assert (out / "train.npz").read_bytes() == (again / "train.npz").read_bytes()
    other = tmp_path / "other"
    ImageData().prepare(config.data, config.seed + 1, other, progress=False)
    assert (out / "train.npz").read_bytes() != (other / "train.npz").read_bytes()
    assert not list(tmp_path.glob(".processed.*"))  # temporary folders are gone


def test_fixed_binarisation_is_deterministic_and_binary(tiny_data):
    m = ImageData()
    config = cfg.load(TINY)
    test = m.load(tiny_data / "data/processed/image", "test")
    a, b = m.fixed(test, config.data, 0), m.fixed(test, config.data, 0)
    assert set(a.x.unique().tolist()) <= {0, 255}
    assert (a.x == b.x).all()
    inputs = m.model_inputs((a.x[:8], a.y[:8]), config.data, train=False, generator=None)
    assert (inputs.x == a.x[:8].float() / 255).all()  # binarising binary pixels changes nothing


def test_load_before_prepare_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"run the prepare stage first \(dvc repro prepare@image\)"):
        ImageData().load(tmp_path, "train")
