"""The exported model on disk: artifact file names and the latent statistics that the class- and direction-based
operations use.

``make export`` writes the artifacts, ``latent_stats.npz`` and ``manifest.json`` (``runtime/manifest.py``) into
``model_store/export/``; readers take the model's shapes from the manifest, never from a constant.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import IO

import numpy as np

from runtime.errors import ManifestError
from runtime.latent import seeded_latents

ARTIFACT_DIR = "export"  # inside the model store folder (model_store/)
DEFAULT_DIR = Path("model_store") / ARTIFACT_DIR

@dataclass(frozen=True)
class Backend:
    """One way to run an exported network, defined once: ``name`` (runtime-precision), its ``artifact`` file in the
    export folder, the ``runtime`` that opens it (``runtime/backends.py``), the ``precision`` of its arithmetic, the
    device kinds it is meant for, whether it is ``optional`` (no route serves it by default; one that fails the
    parity gate is dropped into the manifest's fallback instead of stopping the export), and for a quantized one
    what is ``quantized`` and how (the manifest and the model cards repeat it). The export builds every backend, the
    gate checks them, workers choose among them by device, archives pack the ones a route names."""

    name: str
    artifact: str
    runtime: str  # "torchscript" | "onnx"
    precision: str  # "fp32" | "fp16" | "int8"
    devices: tuple[str, ...]  # "cpu", "cuda"
    optional: bool = False
    quantized: str = ""

    @property
    def twin(self) -> str:
        """The fp32 backend of the same runtime: what serves when this one is dropped."""
        return f"{self.runtime}-fp32"

    @property
    def half_precision(self) -> bool:
        return self.precision in ("fp16", "bf16")


def table(*backends: Backend) -> dict[str, Backend]:
    return {b.name: b for b in backends}


# Decoders: float32 latents in, float32 logits out whatever the precision inside. fp16 is for GPUs; both int8
# decoders quantize the first two of the three convolutions (most of the multiply-adds) and are CPU-only. CPU
# workers take onnx-int8, then torchscript-int8 (serving/settings.py, DECODER, says why).
DECODERS = table(
    Backend("torchscript-fp32", "decoder_fp32.pt", "torchscript", "fp32", ("cpu", "cuda")),
    Backend("torchscript-fp16", "decoder_fp16.pt", "torchscript", "fp16", ("cuda",)),
    Backend("torchscript-int8", "decoder_int8.pt", "torchscript", "int8", ("cpu",), optional=True,
            quantized="static int8 (PyTorch eager mode, x86 or fbgemm engine) of the first two of the three 3x3 "
                      "convolutions, each fused with its ReLU: per-channel symmetric 7-bit weights, 8-bit "
                      "activations calibrated (histogram) on prior draws; the Linear that reads the latent and the "
                      "last convolution, which writes the logits, stay fp32"),
    Backend("onnx-fp32", "decoder_fp32.onnx", "onnx", "fp32", ("cpu", "cuda")),
    Backend("onnx-int8", "decoder_int8.onnx", "onnx", "int8", ("cpu",),
            quantized="static int8 (ONNX Runtime QOperator QLinearConv) of the first two of the three 3x3 "
                      "convolutions: per-channel 8-bit weights, 8-bit activations calibrated (percentile) on prior "
                      "draws; the Linear (Gemm) and the last convolution, which writes the logits, stay fp32"),
)
ENCODERS = table(  # images -> (posterior mean, log-variance)
    Backend("torchscript-fp32", "encoder_fp32.pt", "torchscript", "fp32", ("cpu", "cuda")),
    Backend("onnx-fp32", "encoder_fp32.onnx", "onnx", "fp32", ("cpu", "cuda")),
)
STATS = "latent_stats.npz"


@dataclass(frozen=True)
class LatentStats:
    """Statistics of the model's posteriors, computed at export (export/stats.py) and loaded by the workers.

    Per class (training set, by label): ``class_means`` (C, D), the mean of its posterior means; ``anchor_means``
    and ``anchor_stds`` (C, A, D), the posteriors of A training images of the class whose reconstruction the
    project's classifier recognises (the class's aggregate posterior, to sample from and to edit toward);
    ``class_weights`` (C, D) and ``class_bias`` (C,), a logistic regression of the class on latents (the class
    model). Test set: ``principal_directions`` (D, D), rows sorted by ``principal_std`` (D,) from the largest;
    ``active_order`` (D,), the dimensions sorted by the variance of their posterior mean (the evaluation
    report's "most active" first); ``scatter_means`` (M, D) and ``scatter_labels`` (M,), the first test images'
    posterior means and labels (the explorer draws them). The model's prior as a mixture of K diagonal Gaussians:
    ``prior_means`` and ``prior_stds`` (K, D), ``prior_weights`` (K,); N(0, I) is K = 1 (0, 1, weight 1).
    """

    class_names: tuple[str, ...]
    class_means: np.ndarray
    anchor_means: np.ndarray
    anchor_stds: np.ndarray
    class_weights: np.ndarray
    class_bias: np.ndarray
    principal_directions: np.ndarray
    principal_std: np.ndarray
    active_order: np.ndarray
    scatter_means: np.ndarray
    scatter_labels: np.ndarray
    prior_means: np.ndarray
    prior_stds: np.ndarray
    prior_weights: np.ndarray

    def prior_latents(self, seed: int, n: int, temperature: float = 1.0) -> np.ndarray:
        """n draws (n, D) from the model's prior, a pure function of the seed (row i does not depend on n): a
        component k by its weight, then m_k + temperature * s_k * eps. For N(0, I) (one component, 0 and 1) that
        is temperature * eps, ``seeded_latents`` exactly."""
        eps = seeded_latents(seed, n, self.prior_means.shape[1], temperature)
        if len(self.prior_weights) == 1:
            return self.prior_means[0].astype(np.float64) + self.prior_stds[0] * eps
        u = np.random.default_rng([seed, 1]).random(n)  # one uniform per row, drawn in order: prefix-stable
        k = np.minimum(np.searchsorted(np.cumsum(self.prior_weights), u, side="right"), len(self.prior_weights) - 1)
        return self.prior_means[k].astype(np.float64) + self.prior_stds[k] * eps

    def class_direction(self, source: int, target: int) -> np.ndarray:
        """The attribute vector from class ``source`` to class ``target``: the difference of their means."""
        return self.class_means[target] - self.class_means[source]

    def class_probabilities(self, z: np.ndarray) -> np.ndarray:
        """The class model's probabilities (N, C) for latents (N, D)."""
        logits = z @ self.class_weights.T.astype(np.float64) + self.class_bias
        logits -= logits.max(axis=1, keepdims=True)
        odds = np.exp(logits)
        return odds / odds.sum(axis=1, keepdims=True)

    def nearest_anchor(self, label: int, z: np.ndarray) -> np.ndarray:
        """For each latent (N, D), the nearest anchor (N, D) of class ``label`` among those the class model also
        puts in the class (probability at least 1/2; all of them if none is): an anchor on the border of its class
        decodes to the class only just, and a decoder of lower precision may tip it over."""
        anchors = self.anchor_means[label].astype(np.float64)
        inside = self.class_probabilities(anchors)[:, label] >= 0.5
        anchors = anchors[inside] if inside.any() else anchors
        return anchors[((z[:, None, :] - anchors[None]) ** 2).sum(-1).argmin(1)]


def stats_from_arrays(arrays: Mapping[str, np.ndarray]) -> LatentStats:
    """LatentStats from its arrays by name (``latent_stats.npz``'s members, or export/stats.py's dict); statistics
    written before the prior was part of them are of a model with N(0, I)."""
    dim = arrays["class_means"].shape[1]
    standard = {"prior_means": np.zeros((1, dim), np.float32), "prior_stds": np.ones((1, dim), np.float32),
                "prior_weights": np.ones(1)}
    return LatentStats(tuple(str(n) for n in arrays["class_names"]),
                       *(arrays[f.name] if f.name in arrays else standard[f.name] for f in fields(LatentStats)[1:]))


def read_stats(path: Path | IO[bytes]) -> LatentStats:
    """``latent_stats.npz`` (a path or an open file) as LatentStats; ManifestError names the file when it is
    missing or damaged."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            return stats_from_arrays(arrays)
    except FileNotFoundError:
        raise ManifestError(f"{path}: not found; run `make export`") from None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise ManifestError(f"{path}: not readable latent statistics ({e})") from None
