"""Export a checkpoint for serving: ``python -m export [CHECKPOINT --name export] [--out model_store] [--force]``.

Builds every artifact in a staging folder, gates them on parity with the fp32 eager model, and only then moves
the folder into place as ``OUT/NAME/`` (artifacts, latent_stats.npz, manifest.json with the model's shapes,
export_report.json/.md). Nothing is rebuilt when the manifest in ``OUT/NAME`` already matches this checkpoint,
config, library versions and export code (``--force`` rebuilds). Serving code is not part of that match: the
TorchServe archives are built from these artifacts and the handlers by ``make archives``. Without a checkpoint,
every released model is exported (``export/config.py``, RELEASES: the 64-d and the 2-d model).

When only reduced-precision decoders (int8, fp16) fail the gate, ``--allow-fp32-fallback`` publishes the export
without them: the manifest's ``fallback`` maps each dropped backend to its fp32 twin, the archives serve that one
instead, and the server's ready banner says so. Without the flag such an export fails and says that the flag
exists. An optional decoder (``Backend.optional`` in ``runtime/artifacts.py``: TorchScript int8, which no route
serves by default) that fails is dropped into the fallback whatever the flag, and the export goes on.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from dataclasses import replace
from importlib.metadata import version
from pathlib import Path

import onnx
import onnxruntime
import torch

from export import build, parity, stats
from export.config import DEFAULT_OUT, RELEASES, ExportConfig
from export.errors import ExportError
from runtime.artifacts import ARTIFACT_DIR, DECODERS, STATS
from runtime.errors import FmvaeError, ManifestError
from runtime.manifest import FILE as MANIFEST
from runtime.manifest import Artifact, Fallback, Manifest, Shapes, Source
from training import checkpoint, classifier, data
from training.model import IMAGE_SHAPE

ROOT = Path(__file__).resolve().parent.parent
# Code the artifacts depend on: the export stage, the model definition, the runtimes the parity gate runs, the
# manifest's format.
CODE = [*sorted(ROOT.glob("export/*.py")), ROOT / "training/model.py", ROOT / "runtime/backends.py",
        ROOT / "runtime/artifacts.py", ROOT / "runtime/manifest.py"]


def build_key(ckpt_sha: str, cfg: ExportConfig, allow_fallback: bool = False) -> str:
    """Hash of everything the artifacts depend on: checkpoint, config, library versions, export code, and whether
    failed reduced-precision decoders may be dropped."""
    h = hashlib.sha256(ckpt_sha.encode())
    h.update(b"allow-fp32-fallback" if allow_fallback else b"")
    h.update(json.dumps(cfg.to_dict(), sort_keys=True).encode())
    h.update(json.dumps(versions(cfg), sort_keys=True).encode())
    for path in CODE:
        h.update(path.read_bytes())
    return h.hexdigest()


def versions(cfg: ExportConfig) -> dict:
    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
            "torch_model_archiver": version("torch-model-archiver"), "opset": cfg.opset}


def is_current(folder: Path, key: str) -> bool:
    """True when ``folder`` holds a manifest with this build key and every file it lists is intact."""
    try:
        manifest = Manifest.read(folder)
    except ManifestError:
        return False
    if manifest.build_key != key:
        return False
    files = [(folder / a.file, a.sha256) for a in manifest.artifacts.values()]
    return all(p.is_file() and checkpoint.file_sha256(p) == sha for p, sha in files)


def optional_drops(report: dict) -> dict[str, str]:
    """{optional decoder that failed the gate: its fp32 twin}: dropped whatever the flags (no route serves them by
    default, runtime/artifacts.py)."""
    return {name: DECODERS[name].twin for name, r in report["decoders"].items()
            if name in DECODERS and DECODERS[name].optional and not r["passed"]}


def precision_fallback(report: dict) -> dict[str, str] | None:
    """{failed reduced-precision backend (int8, fp16): its fp32 twin} when only such decoders failed the gate (and
    each has a passing twin), optional ones aside; None when something else failed too, so no fallback can rescue
    the export."""
    failed = [name for part in ("decoders", "encoders") for name, r in report[part].items()
              if not r["passed"] and not (name in DECODERS and DECODERS[name].optional)]
    twins = {name: DECODERS[name].twin if name in DECODERS else name for name in failed}
    if not failed or any(name == twin or name in report["encoders"]
                         or not report["decoders"].get(twin, {}).get("passed") for name, twin in twins.items()):
        return None
    return twins


def export(ckpt_path: Path, out: Path, cfg: ExportConfig, force: bool = False,
           data_dir: str | None = None, classifier_path: Path = classifier.DEFAULT_PATH,
           name: str = ARTIFACT_DIR, allow_fallback: bool = False) -> Manifest:
    """Run the whole export into ``out/name``; returns the manifest. Raises ExportError, CheckpointError or
    DataError."""
    model, state = checkpoint.load_model(ckpt_path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(f"{out}: cannot create the output folder ({e.strerror})") from None
    if not os.access(out, os.W_OK):
        raise ExportError(f"{out}: output folder is not writable")
    ckpt_sha = checkpoint.file_sha256(ckpt_path)
    key = build_key(ckpt_sha, cfg, allow_fallback)
    final = out / name
    if not force and is_current(final, key):
        print(f"{final / MANIFEST} is current for {ckpt_path}; nothing to rebuild")
        return Manifest.read(final)
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
        dropped = optional_drops(report)
        others_passed = all(r["passed"] for part in ("decoders", "encoders") for name, r in report[part].items()
                            if name not in dropped)
        fallback = None if others_passed else precision_fallback(report)
        if not others_passed and not (allow_fallback and fallback):
            hint = ("\nOnly reduced-precision decoders failed: --allow-fp32-fallback publishes the export without them "
                    "and serves their fp32 twins (slower; said in the manifest and the server's banner)."
                    if fallback else "")
            raise ExportError(f"parity gate failed for {ckpt_path}; nothing was written to {final}\n\n{table}{hint}")
        fallback = {**dropped, **(fallback or {})} or None
        for backend in fallback or {}:
            paths.pop(f"decoder/{backend}").unlink()
        print("latent statistics of the training and test sets", file=sys.stderr)
        try:
            arrays = stats.latent_statistics(model, clf, fmnist.train, fmnist.test)
        except ValueError as e:
            raise ExportError(f"{fmnist.source}: cannot compute the latent statistics: {e}") from None
        paths["stats/latent"] = artifact_dir / STATS
        stats.write(paths["stats/latent"], arrays)
        manifest = Manifest(
            build_key=key,
            source=Source(ckpt_path.name, ckpt_sha, state.get("epoch"), state.get("data_sha256")),
            model_config=state["model_config"],
            shapes=Shapes(model.latent_dim, IMAGE_SHAPE),
            export_config=cfg.to_dict(),
            versions=versions(cfg),
            artifacts={name: Artifact(p.name, checkpoint.file_sha256(p), p.stat().st_size,
                                      DECODERS[name.split("/")[1]].quantized if name.startswith("decoder/") else "")
                       for name, p in paths.items()},
            parity=report,
            fallback=Fallback(fallback, "decoders failed the parity gate: " + ", ".join(sorted(fallback))
                              + " (export_report.md)") if fallback else None,
        )
        (artifact_dir / "export_report.json").write_text(json.dumps(report, indent=2) + "\n")
        (artifact_dir / "export_report.md").write_text(f"# Export parity report for `{ckpt_path.name}`\n\n{table}")
        manifest.write(artifact_dir)
        if final.exists():
            os.replace(final, staging / "retired")
        os.replace(artifact_dir, final)
    print(table)
    if dropped:
        print(f"{final}: dropped {', '.join(sorted(dropped))}, which failed the parity gate; no route serves it by "
              "default (manifest: fallback)")
    if served := sorted(set(fallback or {}) - set(dropped)):
        print(f"WARNING: {final} serves fp32 decoders instead of {', '.join(served)}, which failed the parity gate "
              "(manifest: fallback)")
    print(f"{final}: latent size {model.latent_dim}; `make serve` builds the archives from it")
    return manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path, nargs="?", default=None,
                   help="default: every released model, " + ", ".join(f"{c} -> {n}/" for c, n in RELEASES.items()))
    p.add_argument("--name", default=ARTIFACT_DIR, help=f"artifact folder inside --out (default {ARTIFACT_DIR})")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"model store (default {DEFAULT_OUT})")
    p.add_argument("--force", action="store_true", help="rebuild even when the manifest is current")
    p.add_argument("--allow-fp32-fallback", action="store_true",
                   help="publish without reduced-precision decoders that fail the gate; serve their fp32 twins")
    defaults = ExportConfig()
    p.add_argument("--psnr-min-db", type=float, default=defaults.psnr_min_db, help="parity bar (default %(default)s)")
    p.add_argument("--elbo-delta-max", type=float, default=defaults.elbo_delta_max,
                   help="parity bar, nats per image (default %(default)s)")
    p.add_argument("--prior-samples", type=int, default=defaults.prior_samples,
                   help="prior samples the parity gate decodes and classifies (default %(default)s)")
    p.add_argument("--calibration-samples", type=int, default=defaults.calibration_samples,
                   help="prior samples that calibrate the int8 decoders (default %(default)s)")
    p.add_argument("--data-dir", default=None, help="folder with the four IDX .gz files")
    p.add_argument("--classifier", type=Path, default=classifier.DEFAULT_PATH)
    args = p.parse_args(argv)
    if args.checkpoint is None and args.name != ARTIFACT_DIR:
        p.error("--name needs a checkpoint")
    if Path(args.name).name != args.name or args.name in ("", ".", ".."):
        p.error(f"--name {args.name!r}: a folder name inside --out, without '/'")
    jobs = {args.checkpoint: args.name} if args.checkpoint else RELEASES
    if args.prior_samples < 1 or args.calibration_samples < 1:
        p.error("--prior-samples and --calibration-samples must be >= 1")
    cfg = replace(defaults, psnr_min_db=args.psnr_min_db, elbo_delta_max=args.elbo_delta_max,
                  prior_samples=args.prior_samples, calibration_samples=args.calibration_samples)
    try:
        for ckpt, name in jobs.items():
            export(ckpt, args.out, cfg, args.force, args.data_dir, args.classifier, name, args.allow_fp32_fallback)
    except FmvaeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except PermissionError as e:
        print(f"error: {e.filename}: not writable ({e.strerror})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
