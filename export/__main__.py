"""Export a checkpoint for serving: ``python -m export [CHECKPOINT] [--out model_store] [--force]``.

Builds every artifact in a staging folder, gates them on parity with the fp32 eager model, and only then moves
the folder into place as ``OUT/export/`` (artifacts, latent_stats.npz, manifest.json with the model's shapes,
export_report.json/.md). Nothing is rebuilt when the manifest in ``OUT`` already matches this checkpoint,
config, library versions and export code (``--force`` rebuilds). Serving code is not part of that match: the
TorchServe archives are built from these artifacts and the handlers by ``make archives``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

import onnx
import onnxruntime
import torch

from export import build, parity, stats
from export.config import DEFAULT_CHECKPOINT, DEFAULT_OUT, ExportConfig
from runtime.artifacts import ARTIFACT_DIR, MANIFEST, MANIFEST_FORMAT, STATS
from training import checkpoint, classifier, data
from training.model import IMAGE_SHAPE

ROOT = Path(__file__).resolve().parent.parent
# Code the artifacts depend on: the export stage, the model definition, the runtimes the parity gate runs.
CODE = [*sorted(ROOT.glob("export/*.py")), ROOT / "training/model.py", ROOT / "runtime/backends.py",
        ROOT / "runtime/artifacts.py"]


class ExportError(Exception):
    """The export cannot proceed or did not pass its gate; the message says why."""


def build_key(ckpt_sha: str, cfg: ExportConfig) -> str:
    """Hash of everything the artifacts depend on: checkpoint, config, library versions, export code."""
    h = hashlib.sha256(ckpt_sha.encode())
    h.update(json.dumps(cfg.to_dict(), sort_keys=True).encode())
    h.update(json.dumps(versions(cfg), sort_keys=True).encode())
    for path in CODE:
        h.update(path.read_bytes())
    return h.hexdigest()


def versions(cfg: ExportConfig) -> dict:
    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
            "torch_model_archiver": version("torch-model-archiver"), "opset": cfg.opset}


def is_current(out: Path, key: str) -> bool:
    """True when ``out`` holds a manifest with this build key and every file it lists is intact."""
    try:
        manifest = json.loads((out / ARTIFACT_DIR / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    if manifest.get("build_key") != key:
        return False
    files = [(out / ARTIFACT_DIR / a["file"], a["sha256"]) for a in manifest["artifacts"].values()]
    return all(p.is_file() and checkpoint.file_sha256(p) == sha for p, sha in files)


def export(ckpt_path: Path, out: Path, cfg: ExportConfig, force: bool = False,
           data_dir: str | None = None, classifier_path: Path = classifier.DEFAULT_PATH) -> dict:
    """Run the whole export; returns the manifest. Raises ExportError, CheckpointError or DataError."""
    model, state = checkpoint.load_model(ckpt_path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(f"{out}: cannot create the output folder ({e.strerror})") from None
    if not os.access(out, os.W_OK):
        raise ExportError(f"{out}: output folder is not writable")
    ckpt_sha = checkpoint.file_sha256(ckpt_path)
    key = build_key(ckpt_sha, cfg)
    if not force and is_current(out, key):
        print(f"{out / ARTIFACT_DIR / MANIFEST} is current for {ckpt_path}; nothing to rebuild")
        return json.loads((out / ARTIFACT_DIR / MANIFEST).read_text())
    clf, _ = classifier.load(classifier_path)
    fmnist = data.load(data_dir)
    x_test = fmnist.test.tensor()
    with tempfile.TemporaryDirectory(dir=out, prefix=".export-staging-") as staging:
        staging = Path(staging)
        artifact_dir = staging / ARTIFACT_DIR
        artifact_dir.mkdir()
        print("building artifacts", file=sys.stderr)
        paths = build.build(model, artifact_dir, cfg)
        print("checking parity against fp32 eager", file=sys.stderr)
        report = parity.check(model, paths, x_test, clf, cfg)
        table = parity.markdown(report)
        if not report["passed"]:
            raise ExportError(f"parity gate failed for {ckpt_path}; nothing was written to {out}\n\n{table}")
        print("latent statistics of the training and test sets", file=sys.stderr)
        try:
            arrays = stats.latent_statistics(model, fmnist.train, fmnist.test)
        except ValueError as e:
            raise ExportError(f"{fmnist.source}: cannot compute the latent statistics: {e}") from None
        paths["stats/latent"] = artifact_dir / STATS
        stats.write(paths["stats/latent"], arrays)
        manifest = {
            "format": MANIFEST_FORMAT,
            "build_key": key,
            "source_checkpoint": {"file": ckpt_path.name, "sha256": ckpt_sha, "epoch": state.get("epoch"),
                                  "data_sha256": state.get("data_sha256")},
            "model_config": state["model_config"],
            "shapes": {"latent_dim": model.latent_dim, "image_shape": list(IMAGE_SHAPE)},
            "export_config": cfg.to_dict(),
            "versions": versions(cfg),
            "artifacts": {name: {"file": p.name, "sha256": checkpoint.file_sha256(p), "bytes": p.stat().st_size}
                          for name, p in paths.items()},
            "parity": report,
        }
        (artifact_dir / "export_report.json").write_text(json.dumps(report, indent=2) + "\n")
        (artifact_dir / "export_report.md").write_text(f"# Export parity report for `{ckpt_path.name}`\n\n{table}")
        (artifact_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        old = out / ARTIFACT_DIR
        if old.exists():
            retired = staging / "retired"
            os.replace(old, retired)
        os.replace(artifact_dir, old)
    print(table)
    print(f"{out / ARTIFACT_DIR}: latent size {model.latent_dim}; `make serve` builds the archives from it")
    return manifest


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path, nargs="?", default=DEFAULT_CHECKPOINT,
                   help=f"default {DEFAULT_CHECKPOINT}")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"model store (default {DEFAULT_OUT})")
    p.add_argument("--force", action="store_true", help="rebuild even when the manifest is current")
    p.add_argument("--data-dir", default=None, help="folder with the four IDX .gz files")
    p.add_argument("--classifier", type=Path, default=classifier.DEFAULT_PATH)
    args = p.parse_args(argv)
    try:
        export(args.checkpoint, args.out, ExportConfig(), args.force, args.data_dir, args.classifier)
    except (ExportError, checkpoint.CheckpointError, data.DataError) as e:
        raise SystemExit(f"error: {e}") from None
    except PermissionError as e:
        raise SystemExit(f"error: {e.filename}: not writable ({e.strerror})") from None


if __name__ == "__main__":
    main()
