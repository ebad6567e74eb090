"""TorchServe model archives (.mar) for the ``sample`` and ``interpolate`` models, via torch-model-archiver.

An archive holds its handler, the code the handler imports (as the packages ``handlers``, ``export`` and
``training``, a few files of each), the artifacts and a model-config YAML that picks the artifacts.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import yaml

from export.config import DECODERS, ENCODERS

ROOT = Path(__file__).resolve().parent.parent
HANDLERS = ROOT / "handlers"
# The code a worker imports, by path relative to the repository root.
CODE_FILES = [
    "handlers/__init__.py", "handlers/service.py", "handlers/schema.py", "handlers/metrics.py",
    "handlers/openapi.yaml", "export/__init__.py", "export/backends.py", "export/config.py",
    "training/__init__.py", "training/latent.py", "training/tiles.py",
]
# What each archive serves and its TorchServe workers; the handler reads its artifacts' names from the
# model-config YAML. sample has two workers: TorchServe's frontend handles a worker's replies before sending it the
# next batch, and with one worker the decoder idled 27% of the time at n=64 (README, serving performance).
MODELS = {
    "sample": {"handler": HANDLERS / "sample.py", "artifacts": list(DECODERS.values()), "workers": 2},
    "interpolate": {"handler": HANDLERS / "interpolate.py",
                    "artifacts": list(DECODERS.values()) + list(ENCODERS.values()), "workers": 1},
}
STORE_WORKERS = sum(spec["workers"] for spec in MODELS.values())
# TorchServe model config: dynamic batching of up to 8 requests waiting at most 1 ms (0 makes TorchServe 0.12
# wait ~100 ms for a lone request).
MODEL_CONFIG = {"batchSize": 8, "maxBatchDelay": 1, "responseTimeout": 30}
# threads "auto": the CPUs divided among all STORE_WORKERS workers of the store (handlers/service.worker_threads).
HANDLER_CONFIG = {"decoder": DECODERS["onnx-int8"], "gpu_decoder": DECODERS["onnx-fp32"], "threads": "auto",
                  "store_workers": STORE_WORKERS}


class ArchiveError(Exception):
    """torch-model-archiver failed; the message holds its output."""


def model_config(name: str, handler: dict | None = None, workers: dict | None = None) -> dict:
    """The model-config YAML of ``name``; ``handler`` overrides entries of its ``handler:`` section, ``workers``
    the TorchServe settings (batchSize, maxBatchDelay, ...)."""
    section = HANDLER_CONFIG | ({"encoder": ENCODERS["onnx-fp32"]} if name == "interpolate" else {})
    count = MODELS.get(name, {}).get("workers", 1)
    return {"minWorkers": count, "maxWorkers": count} | MODEL_CONFIG | (workers or {}) | {
        "handler": section | (handler or {})}


def build(name: str, artifact_dir: Path, out: Path, version: str, handler: dict | None = None,
          handler_file: Path | None = None, artifacts: list[str] | None = None, workers: dict | None = None) -> Path:
    """Write ``out/<name>.mar`` from the handler, its code, the artifacts and the model-config YAML.

    ``handler``, ``workers``, ``handler_file`` and ``artifacts`` override the defaults (tests and benchmarks
    use them for other backends, other batching and an echo handler).
    """
    spec = MODELS.get(name, {})
    handler_file = handler_file or spec["handler"]
    artifacts = spec["artifacts"] if artifacts is None else artifacts
    with tempfile.TemporaryDirectory() as tmp:
        code = Path(tmp) / "code"
        for rel in CODE_FILES:
            (code / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, code / rel)
        config = Path(tmp) / "model-config.yaml"
        config.write_text(yaml.safe_dump(model_config(name, handler, workers), sort_keys=False))
        extra = [str(code)] + [str(artifact_dir / a) for a in artifacts]
        cmd = [sys.executable, "-m", "model_archiver.model_packaging", "--model-name", name, "--version", version,
               "--handler", str(handler_file), "--extra-files", ",".join(extra), "--config-file", str(config),
               "--export-path", str(out), "--force"]
        result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise ArchiveError(f"torch-model-archiver failed for {name}: {result.stderr.strip() or result.stdout}")
    return out / f"{name}.mar"


def contents(mar: Path) -> list[str]:
    """File names inside an archive (TorchServe's MAR-INF/MANIFEST.json included)."""
    with zipfile.ZipFile(mar) as z:
        return sorted(z.namelist())
