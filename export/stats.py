"""Latent statistics for the class- and direction-based operations, written at export as ``latent_stats.npz``.

From the model's posterior means: per class of the labelled training set, the mean and the symmetric square root
of the covariance (a Gaussian to sample a class from; differences of means are the class edit directions); of the
test set, the principal directions with their standard deviations and the dimensions ordered by the variance of
their mean (the most active first, as in the evaluation report), and the posterior means of the first
SCATTER_POINTS test images with their labels (the explorer page draws them). The file is a zip of .npy arrays with fixed
timestamps, so that a rebuild gives the same bytes (numpy's savez stamps the current time).
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import torch

from training.data import CLASS_NAMES, Split
from training.model import VAE

SCATTER_POINTS = 2000


@torch.no_grad()
def posterior_means(model: VAE, split: Split, batch: int = 1000) -> np.ndarray:
    """Posterior means (N, D) of a split's images, float64."""
    x = split.tensor()
    return torch.cat([model.encode(x[i:i + batch])[0] for i in range(0, len(x), batch)]).double().numpy()


def symmetric_sqrt(cov: np.ndarray) -> np.ndarray:
    """The symmetric square root of a covariance matrix (eigenvalues below zero, from rounding, clipped)."""
    values, vectors = np.linalg.eigh(cov)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def latent_statistics(model: VAE, train: Split, test: Split) -> dict[str, np.ndarray]:
    """The arrays of ``latent_stats.npz`` (names and meaning: runtime/artifacts.LatentStats)."""
    model = model.eval()
    mu_train, mu_test = posterior_means(model, train), posterior_means(model, test)
    means, scales = [], []
    for label in range(len(CLASS_NAMES)):
        members = mu_train[train.labels == label]
        if len(members) < 2:
            raise ValueError(f"class {CLASS_NAMES[label]} has {len(members)} training images; need at least 2")
        means.append(members.mean(0))
        scales.append(symmetric_sqrt(np.cov(members, rowvar=False)))
    centred = mu_test - mu_test.mean(0)
    _, singular, directions = np.linalg.svd(centred, full_matrices=False)
    signs = np.sign(directions[np.arange(len(directions)), np.abs(directions).argmax(1)])  # a fixed sign each
    return {"class_names": np.array(CLASS_NAMES), "class_means": np.array(means, np.float32),
            "class_scales": np.array(scales, np.float32),
            "principal_directions": (directions * signs[:, None]).astype(np.float32),
            "principal_std": (singular / np.sqrt(len(mu_test) - 1)).astype(np.float32),
            "active_order": np.argsort(-mu_test.var(0), kind="stable").astype(np.int64),
            "scatter_means": mu_test[:SCATTER_POINTS].astype(np.float32),
            "scatter_labels": test.labels[:SCATTER_POINTS].astype(np.int64)}


def write(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """An .npz numpy can read, with the same bytes for the same arrays."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
            archive.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), buffer.getvalue(),
                             compress_type=zipfile.ZIP_DEFLATED)
