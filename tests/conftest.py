"""Shared fixtures: small generated Fashion-MNIST-format datasets written as real IDX .gz files, and a model
store built from the current handler code."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from training import data

ARTIFACTS = Path(__file__).resolve().parent.parent / "model_store" / "export"


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array as IDX: magic 0x0803 for images (3-d), 0x0801 for labels (1-d)."""
    magic = data.IMAGE_MAGIC if array.ndim == 3 else data.LABEL_MAGIC
    return struct.pack(">i", magic) + struct.pack(f">{array.ndim}i", *array.shape) + array.tobytes()


def write_dataset(directory: Path, n_train: int = 512, n_test: int = 256, seed: int = 0) -> Path:
    """Write the four files with blob-like images (a bright rectangle whose size depends on the label)."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = (rng.random((n, 28, 28)) * 40).astype(np.uint8)
        for i, label in enumerate(labels):
            top, left = rng.integers(2, 8, 2)
            images[i, top:top + 8 + 2 * label // 2, left:left + 6 + label] = 200 + rng.integers(0, 55)
        (directory / f"{split}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images)))
        (directory / f"{split}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))
    return directory


@pytest.fixture(scope="session")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated dataset shared by the whole session (read-only by convention)."""
    return write_dataset(tmp_path_factory.mktemp("fmnist"))


@pytest.fixture(scope="session")
def current_store(tmp_path_factory) -> Path:
    """A model store with archives built from the committed export artifacts and the current handler code."""
    from export import archive

    store = tmp_path_factory.mktemp("current-store")
    for name in archive.MODELS:
        archive.build(name, ARTIFACTS, store, version="test")
    return store
