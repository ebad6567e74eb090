"""Shared fixtures: small generated Fashion-MNIST-format datasets written as real IDX .gz files, a small
classifier, small models of other latent sizes exported as `make export` does, and a model store built from
the committed artifacts and the current handler code."""

from __future__ import annotations

import gzip
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from runtime.artifacts import ARTIFACT_DIR
from training import classifier, data, train

ARTIFACTS = Path(__file__).resolve().parent.parent / "model_store" / ARTIFACT_DIR


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
def small_classifier(tmp_path_factory, dataset_dir) -> Path:
    """A 1-epoch feature classifier on the generated dataset (the parity gate's label check needs one)."""
    path = tmp_path_factory.mktemp("classifier") / "clf.pt"
    classifier.main(["--out", str(path), "--data-dir", str(dataset_dir), "--epochs", "1"])
    return path


def export_cli(ckpt: Path, out: Path, data_dir: Path, clf: Path) -> subprocess.CompletedProcess:
    """``python -m export`` as `make export` runs it, with the default ExportConfig; fails the test on error."""
    result = subprocess.run([sys.executable, "-m", "export", str(ckpt), "--out", str(out), "--data-dir",
                             str(data_dir), "--classifier", str(clf)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def train_and_export(root: Path, data_dir: Path, clf: Path, latent_dim: int) -> Path:
    """A 1-epoch checkpoint of ``latent_dim`` on 256 generated images, exported into ``root/store``; returns the
    artifact folder."""
    train.main(["--out", str(root / "run"), "--data-dir", str(data_dir), "--epochs", "1", "--subset", "256",
                "--latent-dim", str(latent_dim), "--channels", "8", "16", "32", "--device", "cpu"])
    export_cli(root / "run" / "final.pt", root / "store", data_dir, clf)
    return root / "store" / ARTIFACT_DIR


@pytest.fixture(scope="session")
def artifacts_2d(tmp_path_factory, dataset_dir, small_classifier) -> Path:
    """The artifact folder of a small 2-d latent model, exported through the export CLI."""
    return train_and_export(tmp_path_factory.mktemp("latent2"), dataset_dir, small_classifier, 2)


@pytest.fixture(scope="session")
def current_store(tmp_path_factory) -> Path:
    """A model store with archives built from the committed export artifacts and the current handler code."""
    from handlers import archive

    store = tmp_path_factory.mktemp("current-store")
    archive.build_store(ARTIFACTS, store)
    return store
