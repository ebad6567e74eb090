"""IDX parsing, validation errors, data-source order and the verified download."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import idx_bytes, write_dataset
from training import data


def test_load_generated_dataset(dataset_dir):
    fm = data.load(dataset_dir)
    assert fm.train.images.shape == (512, 28, 28) and fm.train.labels.shape == (512,)
    assert fm.test.images.shape == (256, 28, 28)
    x = fm.train.tensor()
    assert x.shape == (512, 1, 28, 28) and x.dtype.is_floating_point
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.7  # [0, 1], not [-1, 1]
    raw = gzip.decompress((dataset_dir / "t10k-labels-idx1-ubyte.gz").read_bytes())
    assert fm.sha256["t10k-labels-idx1-ubyte.gz"] == hashlib.sha256(raw).hexdigest()


def test_parse_roundtrip():
    images = np.arange(2 * 28 * 28, dtype=np.uint32).astype(np.uint8).reshape(2, 28, 28)
    assert np.array_equal(data.parse_idx(idx_bytes(images), "x", "images"), images)
    labels = np.array([0, 9, 3], dtype=np.uint8)
    assert np.array_equal(data.parse_idx(idx_bytes(labels), "y", "labels", count=3), labels)


@pytest.mark.parametrize("mutate, message", [
    (lambda b: b[:6], "truncated header"),
    (lambda b: b[:-10], "truncated"),
    (lambda b: b + b"\0", "trailing data"),
    (lambda b: (2049).to_bytes(4, "big") + b[4:], "magic number 2049, expected 2051"),
    (lambda b: b[:8] + (27).to_bytes(4, "big") + b[12:], "images are 27x28"),
])
def test_parse_rejects_corrupt_images(mutate, message):
    good = idx_bytes(np.zeros((3, 28, 28), dtype=np.uint8))
    with pytest.raises(data.DataError, match=message) as err:
        data.parse_idx(mutate(good), "some-file.gz", "images")
    assert "some-file.gz" in str(err.value)


def test_parse_rejects_wrong_count_and_labels():
    with pytest.raises(data.DataError, match="header says 3 labels, expected 60000"):
        data.parse_idx(idx_bytes(np.zeros(3, dtype=np.uint8)), "f", "labels", count=60000)
    with pytest.raises(data.DataError, match="label 12 out of range"):
        data.parse_idx(idx_bytes(np.array([1, 12], dtype=np.uint8)), "f", "labels")


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.unlink(), "file not found"),
    (lambda p: p.write_bytes(b"not gzip at all"), "not a valid gzip file"),
    (lambda p: p.write_bytes(p.read_bytes()[:200]), "not a valid gzip file"),
    (lambda p: p.write_bytes(gzip.compress(gzip.decompress(p.read_bytes())[:5000])), "truncated"),
])
def test_load_names_the_bad_file(tmp_path, damage, message):
    write_dataset(tmp_path, n_train=64, n_test=32)
    bad = tmp_path / "train-images-idx3-ubyte.gz"
    damage(bad)
    with pytest.raises(data.DataError, match=message) as err:
        data.load(tmp_path)
    assert str(bad) in str(err.value)


def test_load_rejects_mismatched_split(tmp_path):
    write_dataset(tmp_path, n_train=64, n_test=32)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(31, np.uint8))))
    with pytest.raises(data.DataError, match="test split has 32 images but 31 labels"):
        data.load(tmp_path)


@pytest.fixture
def isolated_sources(tmp_path, monkeypatch):
    """Point the Debian folder and the user cache at empty temp folders; clear the env variables."""
    debian, cache_home = tmp_path / "debian", tmp_path / "cache"
    monkeypatch.setattr(data, "DEBIAN_DIR", debian)
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_home))
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    monkeypatch.delenv(data.MIRROR_ENV, raising=False)
    return debian, cache_home / "fmvae" / "fashion-mnist"


def test_source_order(tmp_path, monkeypatch, isolated_sources):
    debian, cache = isolated_sources
    with pytest.raises(data.DataError, match="no Fashion-MNIST files found"):
        data.resolve_data_dir(download=False)
    write_dataset(cache, 16, 16)
    assert data.resolve_data_dir() == cache
    write_dataset(debian, 16, 16)
    assert data.resolve_data_dir() == debian
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path / "env"))
    assert data.resolve_data_dir() == tmp_path / "env"
    assert data.resolve_data_dir(tmp_path / "flag") == tmp_path / "flag"


@pytest.fixture
def mirror(tmp_path):
    """A real HTTP server on 127.0.0.1 serving a generated dataset; yields (base_url, served folder)."""
    served = write_dataset(tmp_path / "served", 32, 16, seed=7)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", served
    server.shutdown()
    server.server_close()
    thread.join()


def served_hashes(served: Path) -> tuple[data.IdxFile, ...]:
    return tuple(data.IdxFile(f.name, f.split, f.kind, hashlib.sha256(gzip.decompress(
        (served / f.name).read_bytes())).hexdigest()) for f in data.FILES)


def test_download_verifies_and_caches(monkeypatch, isolated_sources, mirror):
    _, cache = isolated_sources
    url, served = mirror
    monkeypatch.setenv(data.MIRROR_ENV, url)
    monkeypatch.setattr(data, "FILES", served_hashes(served))
    fm = data.load()
    assert fm.source == cache
    assert fm.train.images.shape == (32, 28, 28)
    assert sorted(p.name for p in cache.iterdir()) == sorted(f.name for f in data.FILES)  # no temp files left


def test_download_rejects_hash_mismatch(monkeypatch, isolated_sources, mirror):
    _, cache = isolated_sources
    url, _ = mirror
    monkeypatch.setenv(data.MIRROR_ENV, url)  # real Fashion-MNIST hashes: the generated files cannot match
    with pytest.raises(data.DataError, match="SHA-256 of decompressed content"):
        data.load()
    assert list(cache.iterdir()) == []


def test_download_reports_http_errors(monkeypatch, isolated_sources, mirror):
    url, _ = mirror
    monkeypatch.setenv(data.MIRROR_ENV, url + "missing/")
    with pytest.raises(data.DataError, match="download failed.*404"):
        data.load()


@pytest.mark.skipif(not (data.DEBIAN_DIR / data.FILES[0].name).is_file(), reason="Debian dataset not installed")
def test_real_fashion_mnist_statistics():
    fm = data.load(data.DEBIAN_DIR)
    assert fm.sha256 == {f.name: f.sha256 for f in data.FILES}
    assert (len(fm.train.images), len(fm.test.images)) == (60000, 10000)
    pixels = fm.train.images.astype(np.float64) / 255
    assert round(pixels.mean(), 4) == 0.2860
    assert round(pixels.std(), 4) == 0.3530
