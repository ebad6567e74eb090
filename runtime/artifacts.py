"""The exported model on disk: artifact file names and the latent statistics that the class- and direction-based
operations use.

``make export`` writes the artifacts, ``latent_stats.npz`` and ``manifest.json`` (``runtime/manifest.py``) into
``model_store/export/``; readers take the model's shapes from the manifest, never from a constant.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from runtime.errors import ManifestError

ARTIFACT_DIR = "export"  # inside the model store folder (model_store/)
DEFAULT_DIR = Path("model_store") / ARTIFACT_DIR

# Artifact file names by backend (runtime-precision). The fp16 and bf16 decoders are for GPUs: float32 latents
# in, float32 logits out, weights and arithmetic in half precision.
DECODERS = {
    "torchscript-fp32": "decoder_fp32.pt",
    "torchscript-fp16": "decoder_fp16.pt",
    "torchscript-bf16": "decoder_bf16.pt",
    "onnx-fp32": "decoder_fp32.onnx",
    "onnx-int8": "decoder_int8.onnx",
}
ENCODERS = {  # images -> (posterior mean, log-variance)
    "torchscript-fp32": "encoder_fp32.pt",
    "onnx-fp32": "encoder_fp32.onnx",
}
STATS = "latent_stats.npz"


def full_precision_twin(backend: str) -> str:
    """The fp32 backend of the same runtime: what serves when a reduced-precision decoder is dropped."""
    runtime, _ = backend.rsplit("-", 1)
    return f"{runtime}-fp32"


@dataclass(frozen=True)
class LatentStats:
    """Statistics of the posterior means, computed at export (export/stats.py) and loaded by the workers.

    Per class (training set, by label): ``class_means`` (C, D) and ``class_scales`` (C, D, D), the symmetric
    square root of each class's covariance, so that ``mean + eps @ scale`` with eps ~ N(0, I) follows the class's
    Gaussian. Test set: ``principal_directions`` (D, D), rows sorted by ``principal_std`` (D,) from the largest;
    ``active_order`` (D,), the dimensions sorted by the variance of their posterior mean (the evaluation report's
    "most active" first); ``scatter_means`` (M, D) and ``scatter_labels`` (M,), the first test images' posterior
    means and labels (the explorer draws them).
    """

    class_names: tuple[str, ...]
    class_means: np.ndarray
    class_scales: np.ndarray
    principal_directions: np.ndarray
    principal_std: np.ndarray
    active_order: np.ndarray
    scatter_means: np.ndarray
    scatter_labels: np.ndarray

    def class_direction(self, source: int, target: int) -> np.ndarray:
        """The attribute vector from class ``source`` to class ``target``: the difference of their means."""
        return self.class_means[target] - self.class_means[source]


def read_stats(path: Path | IO[bytes]) -> LatentStats:
    """``latent_stats.npz`` (a path or an open file) as LatentStats; ManifestError names the file when it is
    missing or damaged."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            return LatentStats(tuple(str(n) for n in arrays["class_names"]), arrays["class_means"],
                               arrays["class_scales"], arrays["principal_directions"], arrays["principal_std"],
                               arrays["active_order"], arrays["scatter_means"], arrays["scatter_labels"])
    except FileNotFoundError:
        raise ManifestError(f"{path}: not found; run `make export`") from None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise ManifestError(f"{path}: not readable latent statistics ({e})") from None
