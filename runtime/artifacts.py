"""The exported model on disk: artifact file names, and the manifest that says what model they hold.

``make export`` writes the artifacts and ``manifest.json`` into ``model_store/export/``. Readers (workers, the
archive builder, benchmarks, tests) take the model's shapes from the manifest, never from a constant.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

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
ENCODERS = {
    "torchscript-fp32": "encoder_fp32.pt",
    "onnx-fp32": "encoder_fp32.onnx",
}


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


def shapes(artifact_dir: Path) -> Shapes:
    """The shapes recorded in ``artifact_dir``'s manifest."""
    recorded = read_manifest(artifact_dir)["shapes"]
    return Shapes(int(recorded["latent_dim"]), tuple(int(s) for s in recorded["image_shape"]))
