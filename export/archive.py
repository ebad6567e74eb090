"""TorchServe model archives (.mar) for the ``sample`` and ``interpolate`` models, via torch-model-archiver."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from export.config import DECODERS, ENCODERS

HANDLERS = Path(__file__).resolve().parent.parent / "handlers"
BACKENDS = Path(__file__).resolve().parent / "backends.py"
# What each archive serves; the handler reads its artifacts' names from the model-config YAML.
MODELS = {
    "sample": {"handler": HANDLERS / "sample.py", "artifacts": list(DECODERS.values())},
    "interpolate": {"handler": HANDLERS / "sample.py",
                    "artifacts": list(DECODERS.values()) + list(ENCODERS.values())},
}
MODEL_CONFIG = """\
# TorchServe model config for {name}: worker count, batching, and the artifact the handler serves.
minWorkers: 1
maxWorkers: 1
batchSize: 8
maxBatchDelay: 5
responseTimeout: 30
handler:
  decoder: decoder_int8.onnx
  encoder: encoder_fp32.onnx
"""


class ArchiveError(Exception):
    """torch-model-archiver failed; the message holds its output."""


def build(name: str, artifact_dir: Path, out: Path, version: str) -> Path:
    """Write ``out/<name>.mar`` from the handler, backends.py, the artifacts and a model-config YAML."""
    spec = MODELS[name]
    config = artifact_dir / f"{name}-config.yaml"
    config.write_text(MODEL_CONFIG.format(name=name))
    extra = [str(BACKENDS)] + [str(artifact_dir / a) for a in spec["artifacts"]]
    cmd = [sys.executable, "-m", "model_archiver.model_packaging", "--model-name", name, "--version", version,
           "--handler", str(spec["handler"]), "--extra-files", ",".join(extra), "--config-file", str(config),
           "--export-path", str(out), "--force"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    config.unlink()
    if result.returncode != 0:
        raise ArchiveError(f"torch-model-archiver failed for {name}: {result.stderr.strip() or result.stdout}")
    return out / f"{name}.mar"


def contents(mar: Path) -> list[str]:
    """File names inside an archive (TorchServe's MAR-INF/MANIFEST.json included)."""
    with zipfile.ZipFile(mar) as z:
        return sorted(z.namelist())
