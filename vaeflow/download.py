"""Find, fetch and verify public data files.

Resolution order for each file: the mirror folder named by ``$VAEFLOW_DATA_MIRROR``
(``<mirror>/<folder>/<file>``), then Debian's ``/usr/share/datasets/<folder>/`` (the
``dataset-fashion-mnist`` package), then the download cache ``<cache>/<folder>/``, then an
HTTP download from the upstream URL into that cache. Content is always verified: mirrors
may recompress gz files, so the digest that counts is the sha256 of the decompressed bytes;
where only upstream's gz MD5 is known, that is checked instead.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

log = logging.getLogger(__name__)

MIRROR_ENV = "VAEFLOW_DATA_MIRROR"
CACHE_ENV = "VAEFLOW_DATA_CACHE"
DEBIAN_DATASETS = Path("/usr/share/datasets")


class DataNotFoundError(FileNotFoundError):
    """A data file is missing or corrupt; the message says where it is expected and how to get it."""


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    """One file of a public data set and how to check it."""

    folder: str  # the data set's folder in a mirror or cache, e.g. "fashion-mnist"
    name: str  # file name, e.g. "train-images-idx3-ubyte.gz"
    url: str  # upstream URL
    sha256: str | None = None  # of the decompressed content (gz) or of the file itself
    gz_md5: str | None = None  # upstream's MD5 of the .gz file, where no sha256 is known

    def __post_init__(self) -> None:
        if not (self.sha256 or self.gz_md5):
            raise ValueError(f"{self.name}: a RemoteFile needs a sha256 or a gz_md5 to verify it")


def default_cache() -> Path:
    return Path(os.environ.get(CACHE_ENV, "data/raw"))


def _digest(path: Path, algorithm: str, *, decompress: bool) -> str:
    h = hashlib.new(algorithm)
    opener = gzip.open if decompress else open
    try:
        with opener(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except (OSError, EOFError) as exc:  # truncated or not gzip at all
        return f"unreadable ({exc})"
    return h.hexdigest()


def verify(path: Path, spec: RemoteFile) -> str | None:
    """Return None if ``path`` holds the expected content, else a one-line reason."""
    if spec.sha256:
        got = _digest(path, "sha256", decompress=path.suffix == ".gz")
        if got == spec.sha256:
            return None
        if got.startswith("unreadable"):
            return got  # the whole reason: only digests are shortened
        return f"sha256 of content is {got[:16]}…, expected {spec.sha256[:16]}…"
    got = _digest(path, "md5", decompress=False)
    if got.startswith("unreadable"):
        return got
    return None if got == spec.gz_md5 else f"md5 is {got[:16]}…, expected {spec.gz_md5}"


def _candidates(spec: RemoteFile, cache: Path) -> list[Path]:
    out = []
    mirror = os.environ.get(MIRROR_ENV)
    if mirror:
        out.append(Path(mirror) / spec.folder / spec.name)
    out.append(DEBIAN_DATASETS / spec.folder / spec.name)
    out.append(cache / spec.folder / spec.name)
    return out


def _download(spec: RemoteFile, dest: Path, timeout: float = 60.0) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(spec.url, timeout=timeout) as resp:
            shutil.copyfileobj(resp, out)
        os.replace(tmp, dest)  # atomic: a half-downloaded file never carries the final name
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def fetch(spec: RemoteFile, cache: Path | None = None) -> Path:
    """Return a verified local path for ``spec``, downloading it if no local copy exists."""
    cache = cache or default_cache()
    problems = []
    for path in _candidates(spec, cache):
        if path.is_file():
            reason = verify(path, spec)
            if reason is None:
                return path
            problems.append(f"{path}: {reason}")
    dest = cache / spec.folder / spec.name
    try:
        log.info("downloading %s", spec.url)
        _download(spec, dest)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        found = ("; found but rejected: " + "; ".join(problems)) if problems else ""
        raise DataNotFoundError(
            f"{spec.folder}/{spec.name} is not available locally and could not be downloaded from "
            f"{spec.url} ({getattr(exc, 'reason', exc)}){found}. Put the file at {dest}, or set "
            f"{MIRROR_ENV} to a folder holding {spec.folder}/{spec.name}."
        ) from None
    reason = verify(dest, spec)
    if reason is not None:
        dest.unlink()
        raise DataNotFoundError(f"downloaded {spec.url} but its content is wrong ({reason}); try again later")
    return dest
