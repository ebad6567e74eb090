"""Every export setting in one place: artifact names, ONNX opset, parity bars, calibration."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

DEFAULT_CHECKPOINT = Path("model_store/release/vae.pt")
DEFAULT_OUT = Path("model_store")
ARTIFACT_DIR = "export"  # inside the output folder; the .mar archives sit beside it
SERVED_LATENT_DIM = 64  # the serving API takes latent vectors of this length

# Artifact file names, by (part, runtime, precision).
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


@dataclass(frozen=True)
class ExportConfig:
    """Knobs of one export; recorded in the manifest, part of what decides whether artifacts are current."""

    opset: int = 17
    calibration_samples: int = 1024  # prior samples for ONNX Runtime static quantization
    prior_samples: int = 10000  # fixed-seed prior samples the parity gate decodes
    seed: int = 0
    psnr_min_db: float = 40.0
    elbo_delta_max: float = 0.1  # nats per image

    def to_dict(self) -> dict:
        """Plain-JSON form, as written to the manifest."""
        return asdict(self)
