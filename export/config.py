"""Every export setting in one place: where checkpoints come from and artifacts go, ONNX opset, parity bars,
calibration. Artifact names live in ``runtime/artifacts.py`` (the workers read them too)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

DEFAULT_CHECKPOINT = Path("model_store/release/vae.pt")
DEFAULT_OUT = Path("model_store")  # the artifacts go to its export/ folder (runtime.artifacts.ARTIFACT_DIR)
# The released models and the folder of DEFAULT_OUT each is exported to: what `make export` (no CHECKPOINT) builds.
RELEASES = {DEFAULT_CHECKPOINT: "export", Path("model_store/release-2d/vae.pt"): "export-2d"}


@dataclass(frozen=True)
class ExportConfig:
    """Knobs of one export; recorded in the manifest, part of what decides whether artifacts are current."""

    opset: int = 17
    calibration_samples: int = 1024  # prior samples that calibrate both int8 decoders (static quantization)
    prior_samples: int = 10000  # fixed-seed prior samples the parity gate decodes
    # Half-precision decoders run slowly on the CPU the gate runs on: they are gated on the first this many of each
    # set (docs/export.md: their margin over the bars is tens of dB, far beyond what the smaller sample can move).
    half_precision_samples: int = 2000
    seed: int = 0
    psnr_min_db: float = 40.0
    elbo_delta_max: float = 0.1  # nats per image

    def to_dict(self) -> dict:
        """Plain-JSON form, as written to the manifest."""
        return asdict(self)
