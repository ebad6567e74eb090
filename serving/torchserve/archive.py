"""TorchServe model archives (.mar), built from the exported artifacts and the worker code, and checked before a
start (``check_archive``):
``python -m serving.torchserve.archive [--store model_store] [--out build/model_store]`` (``make archives``).

An archive holds its handler, the folders ``handlers/`` and ``runtime/`` (everything a worker imports, and
nothing of the host side), the artifacts its settings name from its export folder (``model_store/<export>/``),
the export manifest (the model's shapes and identity) and a model-config YAML written from
``serving/settings.py``. Where the export fell back from a failed int8 decoder, the archive serves its fp32 twin
(``Manifest.serving_backends``). Archives are build outputs, made in about a second; they are not committed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from runtime import artifacts
from runtime.errors import ManifestError
from runtime.manifest import FILE as MANIFEST
from runtime.manifest import Manifest
from serving.errors import ArchiveError, ServerError
from serving.settings import ARCHIVE_DIR, MODELS, ROOT, ModelSpec, worker_config

CODE_DIRS = ("handlers", "runtime")  # the packages a worker imports (tests/test_layout.py checks the rule)


def artifact_files(spec: ModelSpec, manifest: Manifest) -> list[str]:
    """The artifact files the route's worker may open, for any device, and the latent statistics if it uses them."""
    config = worker_config(spec, manifest)
    named = [artifacts.DECODERS[b].artifact for backends in config.decoder.values() for b in backends]
    named += [artifacts.ENCODERS[b].artifact for backends in config.encoder.values() for b in backends]
    return sorted(set(named)) + ([artifacts.STATS] if config.stats else [])


def model_config(spec: ModelSpec, manifest: Manifest) -> dict:
    """The archive's model-config YAML: TorchServe's worker and batching settings, and under ``handler:`` the
    worker's ``WorkerConfig`` (``handlers/config.py``)."""
    return {"minWorkers": spec.workers, "maxWorkers": spec.workers, "deviceType": "gpu" if spec.gpu else "cpu",
            "batchSize": spec.batch_size,
            "maxBatchDelay": spec.max_batch_delay_ms, "jobQueueSize": spec.job_queue_size,
            "responseTimeout": spec.response_timeout_s,
            "handler": worker_config(spec, manifest).to_dict()}


def build(name: str, spec: ModelSpec, artifact_dir: Path, out: Path) -> Path:
    """Write ``out/<name>.mar``; its version is the export's identity (the build its answers name, ``X-Model-Build``),
    so that two builds of one route can be registered side by side (a roll-out)."""
    manifest = Manifest.read(artifact_dir)
    files = [artifact_dir / MANIFEST] + [artifact_dir / f for f in artifact_files(spec, manifest)]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise ArchiveError(f"{name}: missing {', '.join(missing)}; run `make export`")
    with tempfile.TemporaryDirectory() as tmp:
        code = Path(tmp) / "code"
        for folder in CODE_DIRS:
            shutil.copytree(ROOT / folder, code / folder, ignore=shutil.ignore_patterns("__pycache__"))
        config = Path(tmp) / "model-config.yaml"
        config.write_text(yaml.safe_dump(model_config(spec, manifest), sort_keys=False))
        cmd = [sys.executable, "-m", "model_archiver.model_packaging", "--model-name", name,
               "--version", manifest.identity, "--handler", str(spec.handler),
               "--extra-files", ",".join([str(code), *map(str, files)]), "--config-file", str(config),
               "--export-path", str(out), "--force"]
        # The archiver stages its copies in $TMPDIR/<model name>: a folder of this build's own, so that builds of
        # the same name (another store, a test) do not meet there.
        result = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | {"TMPDIR": tmp})
    if result.returncode != 0:
        raise ArchiveError(f"torch-model-archiver failed for {name}: {result.stderr.strip() or result.stdout}")
    return out / f"{name}.mar"


def build_store(store: Path, out: Path, models: dict[str, ModelSpec] = MODELS) -> dict[str, Path]:
    """Build every model's archive into ``out`` from its export folder in ``store``, as many at once as there are
    CPUs: all in a staging folder first, then each moved into place."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".staging-") as staging, \
            ThreadPoolExecutor(os.cpu_count() or 1) as pool:  # each build is mostly an archiver process starting
        jobs = {name: pool.submit(build, name, spec, store / spec.export, Path(staging))
                for name, spec in models.items()}
        built = {name: job.result() for name, job in jobs.items()}
        for path in built.values():
            os.replace(path, out / path.name)
    return {name: out / path.name for name, path in built.items()}


def contents(mar: Path) -> list[str]:
    """File names inside an archive (TorchServe's MAR-INF/MANIFEST.json included)."""
    with zipfile.ZipFile(mar) as z:
        return sorted(z.namelist())


def packed(mar: Path, name: str) -> bytes:
    """A file packed in an archive (its name inside, e.g. ``latent_stats.npz``)."""
    with zipfile.ZipFile(mar) as z:
        return z.read(name)


def packed_manifest(mar: Path) -> Manifest:
    """The export manifest packed in an archive."""
    try:
        text = packed(mar, MANIFEST)
    except (OSError, KeyError, zipfile.BadZipFile) as e:
        raise ManifestError(f"{mar}: no readable {MANIFEST} inside ({e})") from None
    return Manifest.loads(text, f"{mar}:{MANIFEST}")


def check_archive(path: Path) -> None:
    """Raise ServerError unless ``path`` is a readable model archive: a zip whose every member passes its CRC,
    with TorchServe's MAR-INF/MANIFEST.json and the handler file it names, and whose packed artifacts have the
    SHA-256 the packed export manifest gives them (a damaged artifact in a sound zip fails here, named)."""
    def damaged(reason: str) -> ServerError:
        return ServerError(f"{path}: not a usable model archive ({reason}); rebuild it with `make archives`")

    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
            if bad is not None:
                raise damaged(f"member {bad} is corrupt")
            manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
            handler = manifest["model"]["handler"]
            if handler not in archive.namelist():
                raise damaged(f"its handler {handler} is missing")
            export = Manifest.loads(archive.read(MANIFEST), f"{path}:{MANIFEST}")
            for artifact in export.artifacts.values():
                if artifact.file in archive.namelist():
                    digest = hashlib.sha256(archive.read(artifact.file)).hexdigest()
                    if digest != artifact.sha256:
                        raise damaged(f"member {artifact.file} has SHA-256 {digest[:16]}..., its manifest says "
                                      f"{artifact.sha256[:16]}...")
    except zipfile.BadZipFile as e:
        raise damaged(f"not a zip file: {e}") from None
    except ManifestError as e:
        raise damaged(str(e)) from None
    except (KeyError, ValueError, OSError, EOFError, zipfile.LargeZipFile) as e:
        raise damaged(f"{type(e).__name__}: {e}") from None



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.torchserve.archive", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, default=artifacts.DEFAULT_DIR.parent,
                        help="the model store with the export folders (default %(default)s)")
    parser.add_argument("--out", type=Path, default=ARCHIVE_DIR)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        built = build_store(args.store, args.out)
    except (ArchiveError, ManifestError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    sizes = ", ".join(f"{p.name} ({p.stat().st_size / 1e6:.1f} MB)" for p in built.values())
    print(f"built {sizes} in {args.out} from {args.store} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
