"""The exported model on disk: artifact file names, the manifest that says what model they hold, and the
latent statistics that the class- and direction-based operations use.

``make export`` writes the artifacts, ``latent_stats.npz`` and ``manifest.json`` into ``model_store/export/``.
Readers (workers, the archive builder, benchmarks, tests) take the model's shapes from the manifest, never from
a constant.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

ARTIFACT_DIR = "export"  # inside the model store folder (model_store/)
DEFAULT_DIR = Path("model_store") / ARTIFACT_DIR
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "fmvae-export-v2"

# Artifact file names by backend (runtime-precision).
DECODERS = {
    "torchscript-fp32": "decoder_fp32.pt",
    "torchscript-int8": "decoder_int8.pt",
    "onnx-fp32": "decoder_fp32.onnx",
    "onnx-int8": "decoder_int8.onnx",
}
ENCODERS = {  # images -> (posterior mean, log-variance)
    "torchscript-fp32": "encoder_fp32.pt",
    "onnx-fp32": "encoder_fp32.onnx",
}
STATS = "latent_stats.npz"
FALLBACK = "fallback"  # manifest key: {"backends": {dropped int8 backend: fp32 twin}, "reason": ...} (export)


class ManifestError(Exception):
    """The manifest is missing, unreadable or not of this format; the message names the file."""


@dataclass(frozen=True)
class Shapes:
    """The served model's shapes: latent vectors (latent_dim,), images (channels, height, width)."""

    latent_dim: int
    image_shape: tuple[int, int, int]


def read_manifest(artifact_dir: Path) -> dict:
    """``artifact_dir/manifest.json`` as a dict; ManifestError names the file and what is wrong."""
    path = Path(artifact_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise ManifestError(f"{path}: not found; run `make export`") from None
    except (OSError, ValueError) as e:
        raise ManifestError(f"{path}: not a readable manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ManifestError(f"{path}: format {found!r}, expected {MANIFEST_FORMAT!r}; re-run `make export`")
    return manifest


def serving_backends(manifest: dict, backends: tuple[str, ...]) -> tuple[str, ...]:
    """``backends`` with each that the export dropped (its int8 decoder failed the parity gate and the export was
    allowed to fall back) replaced by its fp32 twin."""
    swap = manifest.get(FALLBACK, {}).get("backends", {})
    return tuple(dict.fromkeys(swap.get(b, b) for b in backends))


def shapes(artifact_dir: Path) -> Shapes:
    """The shapes recorded in ``artifact_dir``'s manifest."""
    recorded = read_manifest(artifact_dir)["shapes"]
    return Shapes(int(recorded["latent_dim"]), tuple(int(s) for s in recorded["image_shape"]))


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
