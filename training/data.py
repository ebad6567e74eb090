"""Fashion-MNIST from the four original IDX ``.gz`` files, with a small validating parser.

Where the files come from, first match wins: ``--data-dir``, ``$FMVAE_DATA_DIR``, Debian's
``dataset-fashion-mnist`` package, then a download from the canonical mirror into a user cache,
verified by the SHA-256 of each file's decompressed content.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from training.errors import DataError

DATA_DIR_ENV = "FMVAE_DATA_DIR"
MIRROR_ENV = "FMVAE_MIRROR"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_MIRROR = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"

IMAGE_MAGIC = 2051  # 0x00000803: unsigned byte, 3 dimensions
LABEL_MAGIC = 2049  # 0x00000801: unsigned byte, 1 dimension
IMAGE_SIZE = 28
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


@dataclass(frozen=True)
class IdxFile:
    """One of the four files: its name, the split it belongs to, and its known decompressed hash."""

    name: str
    split: str
    kind: str  # "images" or "labels"
    sha256: str  # of the decompressed content


FILES = (
    IdxFile("train-images-idx3-ubyte.gz", "train", "images",
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
    IdxFile("train-labels-idx1-ubyte.gz", "train", "labels",
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
    IdxFile("t10k-images-idx3-ubyte.gz", "test", "images",
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
    IdxFile("t10k-labels-idx1-ubyte.gz", "test", "labels",
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
)


def read_gz(path: Path) -> bytes:
    """Decompress a ``.gz`` file, naming it in the error when it is missing or corrupt."""
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: not a valid gzip file ({e})") from None


def parse_idx(raw: bytes, source: str, kind: str, count: int | None = None) -> np.ndarray:
    """Parse IDX bytes into uint8 images (N, 28, 28) or labels (N,), validating every header field."""
    magic, ndim = (IMAGE_MAGIC, 3) if kind == "images" else (LABEL_MAGIC, 1)
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{source}: truncated header ({len(raw)} bytes, expected at least {header})")
    found_magic = struct.unpack(">i", raw[:4])[0]
    if found_magic != magic:
        raise DataError(f"{source}: magic number {found_magic}, expected {magic} for IDX {kind}")
    dims = struct.unpack(f">{ndim}i", raw[4:header])
    if count is not None and dims[0] != count:
        raise DataError(f"{source}: header says {dims[0]} {kind}, expected {count}")
    if kind == "images" and dims[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(f"{source}: images are {dims[1]}x{dims[2]}, expected {IMAGE_SIZE}x{IMAGE_SIZE}")
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        raise DataError(f"{source}: {len(raw)} bytes after decompression, expected {expected} "
                        f"({'truncated' if len(raw) < expected else 'trailing data'})")
    array = np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)
    if kind == "labels" and array.size and array.max() > 9:
        raise DataError(f"{source}: label {array.max()} out of range 0..9")
    return array


def default_cache_dir() -> Path:
    """Where downloaded files are kept: ``$XDG_CACHE_HOME/fmvae/fashion-mnist``."""
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "fmvae" / "fashion-mnist"


def _has_all_files(directory: Path) -> bool:
    return all((directory / f.name).is_file() for f in FILES)


def resolve_data_dir(data_dir: str | os.PathLike | None = None, download: bool = True) -> Path:
    """Pick the data folder: the flag, ``$FMVAE_DATA_DIR``, Debian's folder, the cache, or a download.

    An explicitly named folder (flag or variable) is used as is, so its errors name it.
    """
    if data_dir is not None:
        return Path(data_dir)
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV])
    if _has_all_files(DEBIAN_DIR):
        return DEBIAN_DIR
    cache = default_cache_dir()
    if not _has_all_files(cache):
        if not download:
            raise DataError(f"no Fashion-MNIST files found in {DEBIAN_DIR} or {cache}; "
                            f"install dataset-fashion-mnist or pass --data-dir")
        download_files(os.environ.get(MIRROR_ENV, DEFAULT_MIRROR), cache)
    return cache


def download_files(base_url: str, dest: Path) -> None:
    """Download each file into ``dest`` atomically, keeping it only if its decompressed SHA-256 matches."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in FILES:
        target = dest / f.name
        if target.is_file() and hashlib.sha256(read_gz(target)).hexdigest() == f.sha256:
            continue
        url = base_url.rstrip("/") + "/" + f.name
        fd, tmp = tempfile.mkstemp(dir=dest, prefix=f".{f.name}.")
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
                out.write(response.read())
            digest = hashlib.sha256(read_gz(Path(tmp))).hexdigest()
            if digest != f.sha256:
                raise DataError(f"{url}: SHA-256 of decompressed content is {digest}, expected {f.sha256}")
            os.replace(tmp, target)
        except OSError as e:
            raise DataError(f"{url}: download failed ({e})") from None
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


@dataclass
class Split:
    """One split held in memory: uint8 images (N, 28, 28) and labels (N,)."""

    images: np.ndarray
    labels: np.ndarray

    def tensor(self) -> torch.Tensor:
        """Images as float32 (N, 1, 28, 28) in [0, 1]: BCE needs probabilities, not [-1, 1]."""
        return torch.from_numpy(self.images.astype(np.float32) / 255.0).unsqueeze(1)


@dataclass
class FashionMNIST:
    """Train and test splits plus the SHA-256 of each file's decompressed content."""

    train: Split
    test: Split
    sha256: dict[str, str]
    source: Path


def load(data_dir: str | os.PathLike | None = None, download: bool = True) -> FashionMNIST:
    """Load and validate all four files from the resolved data folder."""
    directory = resolve_data_dir(data_dir, download)
    if not directory.is_dir():
        raise DataError(f"{directory}: data folder does not exist")
    arrays: dict[tuple[str, str], np.ndarray] = {}
    hashes: dict[str, str] = {}
    for f in FILES:
        path = directory / f.name
        raw = read_gz(path)
        arrays[(f.split, f.kind)] = parse_idx(raw, str(path), f.kind)
        hashes[f.name] = hashlib.sha256(raw).hexdigest()
    for split in ("train", "test"):
        n_images, n_labels = len(arrays[(split, "images")]), len(arrays[(split, "labels")])
        if n_images != n_labels:
            raise DataError(f"{directory}: {split} split has {n_images} images but {n_labels} labels")
    return FashionMNIST(
        train=Split(arrays[("train", "images")], arrays[("train", "labels")]),
        test=Split(arrays[("test", "images")], arrays[("test", "labels")]),
        sha256=hashes,
        source=directory,
    )
