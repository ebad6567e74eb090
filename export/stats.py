"""Latent statistics for the class- and direction-based operations, written at export as ``latent_stats.npz``.

From the model's posteriors of the labelled training set, per class:

- the mean of its posterior means (differences of means are the numeric class edits' directions);
- its region of latent space as an aggregate posterior: ``ANCHORS`` training images of the class, each as its
  posterior (mean and standard deviation), drawn among the images whose reconstruction the project's classifier
  labels as the class. A class sample is a random anchor, then a draw from its posterior; an "auto" edit moves
  toward the nearest anchor of the target class. One Gaussian per class (mean and covariance) lands in its class
  far less often (docs/latent-api.md) and is not shipped;
- a class model on latents (multinomial logistic regression, fitted to posterior draws of every training image)
  that a worker evaluates in microseconds: the probabilities in answers and the stopping rule of "auto" edits.

Of the test set: the principal directions with their standard deviations, the dimensions ordered by the variance
of their mean (the most active first, as in the evaluation report), and the posterior means of the first
SCATTER_POINTS test images with their labels (the explorer page draws them). The file is a zip of .npy arrays with
fixed timestamps, so that a rebuild gives the same bytes (numpy's savez stamps the current time).
"""

from __future__ import annotations

import io
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch

from training.classifier import Classifier
from training.data import CLASS_NAMES, Split
from training.model import VAE, StandardNormal

SCATTER_POINTS = 2000
ANCHORS = 200  # per class: 200 x 10 x 64 x 2 float32 is 1 MB of the file
CLASS_MODEL_L2 = 1e-4  # the class model's weight decay


@torch.no_grad()
def posteriors(model: VAE, split: Split, batch: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Posterior means and standard deviations (N, D) of a split's images, float64."""
    x = split.tensor()
    mu, logvar = zip(*(model.encode(x[i:i + batch]) for i in range(0, len(x), batch)), strict=True)
    return torch.cat(mu).double().numpy(), torch.cat(logvar).mul(0.5).exp().double().numpy()


@torch.no_grad()
def recognised(model: VAE, clf: Classifier, mu: np.ndarray, label: int) -> np.ndarray:
    """Which posterior means decode to an image the classifier labels ``label``."""
    images = torch.sigmoid(model.decode(torch.from_numpy(mu).float()))
    return clf.predict(images).numpy() == label


def class_model(z: np.ndarray, labels: np.ndarray, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression of ``labels`` on latents ``z``: weights (C, D) and biases (C,), float64."""
    x, y = torch.from_numpy(z), torch.from_numpy(labels.astype(np.int64))
    weights = torch.zeros(classes, z.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weights, bias], max_iter=300, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        optimizer.zero_grad()
        value = torch.nn.functional.cross_entropy(x @ weights.T + bias, y) + CLASS_MODEL_L2 * weights.square().sum()
        value.backward()
        return value

    optimizer.step(loss)
    return weights.detach().numpy(), bias.detach().numpy()


def latent_statistics(model: VAE, clf: Classifier, train: Split, test: Split, seed: int = 0
                      ) -> dict[str, np.ndarray]:
    """The arrays of ``latent_stats.npz`` (names and meaning: runtime/artifacts.LatentStats)."""
    model, rng = model.eval(), np.random.default_rng(seed)
    mu_train, sd_train = posteriors(model, train)
    mu_test, _ = posteriors(model, test)
    means, anchors = [], []
    for label, name in enumerate(CLASS_NAMES):
        members = np.flatnonzero(train.labels == label)
        if len(members) < 2:
            raise ValueError(f"class {name} has {len(members)} training images; need at least 2")
        good = members[recognised(model, clf, mu_train[members], label)]
        if len(good) < 2:  # a model too weak for the classifier to recognise the class: all its images
            print(f"latent statistics: the classifier recognises {len(good)} reconstructions of {name}; "
                  "its anchors are drawn from all its training images", file=sys.stderr)
            good = members
        means.append(mu_train[members].mean(0))
        anchors.append(rng.choice(good, ANCHORS, replace=len(good) < ANCHORS))  # repeats in a class that has few
    anchors = np.stack(anchors)
    weights, bias = class_model(mu_train + sd_train * rng.standard_normal(mu_train.shape), train.labels,
                                len(CLASS_NAMES))
    centred = mu_test - mu_test.mean(0)
    _, singular, directions = np.linalg.svd(centred, full_matrices=False)
    signs = np.sign(directions[np.arange(len(directions)), np.abs(directions).argmax(1)])  # a fixed sign each
    return {"class_names": np.array(CLASS_NAMES), "class_means": np.array(means, np.float32),
            "anchor_means": mu_train[anchors].astype(np.float32), "anchor_stds": sd_train[anchors].astype(np.float32),
            "class_weights": weights.astype(np.float32), "class_bias": bias.astype(np.float32),
            "principal_directions": (directions * signs[:, None]).astype(np.float32),
            "principal_std": (singular / np.sqrt(len(mu_test) - 1)).astype(np.float32),
            "active_order": np.argsort(-mu_test.var(0), kind="stable").astype(np.int64),
            "scatter_means": mu_test[:SCATTER_POINTS].astype(np.float32),
            "scatter_labels": test.labels[:SCATTER_POINTS].astype(np.int64), **prior_arrays(model)}


def prior_arrays(model: VAE) -> dict[str, np.ndarray]:
    """The model's prior as a mixture of diagonal Gaussians: N(0, I) is the one component (0, 1) of weight 1."""
    prior, dim = model.prior, model.latent_dim
    if isinstance(prior, StandardNormal):
        means, stds, weights = np.zeros((1, dim)), np.ones((1, dim)), np.ones(1)
    else:
        with torch.no_grad():
            means, stds = prior.means.double().numpy(), torch.exp(0.5 * prior.logvars.double()).numpy()
            weights = torch.softmax(prior.logits.double(), 0).numpy()
    return {"prior_means": means.astype(np.float32), "prior_stds": stds.astype(np.float32),
            "prior_weights": weights.astype(np.float64)}


def write(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """An .npz numpy can read, with the same bytes for the same arrays."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
            archive.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), buffer.getvalue(),
                             compress_type=zipfile.ZIP_DEFLATED)
