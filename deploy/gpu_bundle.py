"""What the GPU machine lacks, carried beside the code: ``python -m deploy.gpu_bundle build`` (``make gpu-bundle``)
and its CPU dry run, ``python -m deploy.gpu_bundle check``.

The GPU machine (docs/gpu.md) has Python 3.12 with CUDA PyTorch, numpy, Pillow, PyYAML, prometheus-client, psutil
and a CPU-only onnxruntime (its package list: ``deploy/gpu_machine_packages.txt``), no Java and no internet. Each
command there carries the working tree and at most 64 MiB in all, so the bundle comes in parts:

1. ``worker/`` (the wheels the worker and ``bench.gpu`` need that the machine lacks: fastjsonschema, jsonschema and
   its dependencies, this venv's versions, cp312 manylinux x86-64) and ``runtime/jre.tar.xz`` (a Java 17 runtime
   trimmed by jlink to the modules TorchServe's frontend loads);
2. ``server/``: the wheels of both hosts' packages the machine lacks: TorchServe and torch-model-archiver (40 MiB,
   most of it TorchServe's frontend jar), kserve and what it needs (the venv lock's closure of kserve, less the
   machine's packages), in one tar cut into pieces of at most ``PIECE_MIB``, one piece a command, so that each
   fits beside the tree.

The first command installs part 1 and unpacks the runtime into /tmp; the next ones leave their pieces in /tmp, and
the last joins them, installs both hosts and runs the served benchmark (the machine stays held about 30 s after a
command, so each finds what the one before left). ``build`` prints each command's size with the tree's, and the
commands. ``check`` proves the bundle on this CPU: it builds it for this interpreter, makes a bare virtual
environment holding only the packages the GPU machine has (linked from this venv), joins the pieces, installs the
bundle into an empty folder with ``pip --no-index --target`` and runs ``bench.gpu --smoke`` there, the real
TorchServe on the bundled Java and the KServe host included.
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from deploy import lock
from deploy.errors import BundleError

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "build" / "gpu-bundle"
GPU_PACKAGES = Path(__file__).resolve().parent / "gpu_machine_packages.txt"
WORKER_PACKAGES = ("fastjsonschema", "jsonschema", "jsonschema-specifications", "referencing", "rpds-py")
TORCHSERVE_PACKAGES = ("torchserve", "torch-model-archiver")
# TorchServe 0.12's frontend: Netty, log4j (java.beans, in java.desktop), JMX metrics, gRPC.
JRE_MODULES = ("java.base", "java.desktop", "java.logging", "java.management", "java.naming", "java.net.http",
               "java.sql", "java.xml", "java.scripting", "java.instrument", "java.security.jgss", "jdk.crypto.ec",
               "jdk.management", "jdk.unsupported", "jdk.zipfs")
GPU_PYTHON = "3.12"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
LIMIT_MIB = 64
PIECE_MIB = 24  # with a tree of up to ~38 MiB, each command fits in LIMIT_MIB
INSTALL = "python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site"
PIECES = "/tmp/fmvae-server"  # where the server pieces gather on the GPU machine


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def machine_packages() -> set[str]:
    """The GPU machine's Python packages, normalized names."""
    return {normalized(line.split("#")[0].strip()) for line in GPU_PACKAGES.read_text().splitlines()} - {""}


def kserve_packages() -> tuple[str, ...]:
    """kserve and the packages it needs (the venv lock's closure of kserve) that the GPU machine lacks."""
    needed = lock.closure(lock.entries(lock.body(lock.VENV_LOCK)), {"kserve"})
    return tuple(lock.name_of(e) for e in needed if normalized(lock.name_of(e)) not in machine_packages())


SERVER_PACKAGES = TORCHSERVE_PACKAGES + kserve_packages()  # both hosts


def pinned(names: tuple[str, ...]) -> list[str]:
    """``name==version`` of each package as installed in this venv."""
    return [f"{name}=={metadata.version(name)}" for name in names]


def download(names: tuple[str, ...], dest: Path, python_version: str | None) -> None:
    """Wheels of ``names`` (this venv's versions) into ``dest``, for ``python_version`` on manylinux x86-64, or for
    this interpreter when None; from pip's cache when it has them."""
    dest.mkdir(parents=True, exist_ok=True)
    target = [] if python_version is None else [
        "--python-version", python_version, "--implementation", "cp",
        *[arg for platform in PLATFORMS for arg in ("--platform", platform)]]
    result = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                             *target, "-d", str(dest), *pinned(names)], capture_output=True, text=True)
    if result.returncode != 0:
        raise BundleError(f"pip download failed: {result.stderr.strip()[-1500:]}")


def jlink() -> str:
    """The jlink of a Java 17 JDK."""
    found = shutil.which("jlink") or next((str(p) for p in sorted(Path("/usr/lib/jvm").glob("*17*/bin/jlink"))), None)
    if found is None:
        raise BundleError("jlink not found: the bundle's Java runtime is made with a JDK "
                         "(Debian: apt-get install openjdk-17-jdk-headless)")
    return found


def java_runtime(dest: Path) -> Path:
    """``dest/jre.tar.xz``: a trimmed Java runtime whose folder unpacks as ``jre/``."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        jre = Path(tmp) / "jre"
        result = subprocess.run([jlink(), "--add-modules", ",".join(JRE_MODULES), "--strip-debug", "--no-man-pages",
                                 "--no-header-files", "--compress=2", "--output", str(jre)], capture_output=True,
                                text=True)
        if result.returncode != 0:
            raise BundleError(f"jlink failed: {result.stderr.strip()[-1500:]}")
        archive = dest / "jre.tar.xz"
        with tarfile.open(archive.with_suffix(".tmp"), "w:xz") as tar:
            tar.add(jre, arcname="jre")
        os.replace(archive.with_suffix(".tmp"), archive)
    return archive


def size(path: Path) -> int:
    """Bytes of a file or of every file under a folder."""
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def tree_size() -> int:
    """Bytes of the working tree that travels with a command: tracked files and untracked ones git does not
    ignore."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.split(b"\0")
    return sum((ROOT / f.decode()).stat().st_size for f in files if f and (ROOT / f.decode()).is_file())


def cut(source: Path, dest: Path, piece_bytes: int) -> list[Path]:
    """``source`` in pieces ``dest/part-00``, ``part-01``, ... of at most ``piece_bytes``; ``cat`` joins them."""
    dest.mkdir(parents=True, exist_ok=True)
    pieces = []
    with open(source, "rb") as f:
        while chunk := f.read(piece_bytes):
            pieces.append(dest / f"part-{len(pieces):02d}")
            pieces[-1].write_bytes(chunk)
    return pieces


def build(out: Path, python_version: str | None = GPU_PYTHON) -> list[list[Path]]:
    """Every part into ``out`` (replacing what was there); returns what each device command carries, in order."""
    shutil.rmtree(out, ignore_errors=True)
    download(WORKER_PACKAGES, out / "worker", python_version)
    java_runtime(out / "runtime")
    with tempfile.TemporaryDirectory() as tmp:
        download(SERVER_PACKAGES, Path(tmp) / "wheels", python_version)
        with tarfile.open(Path(tmp) / "server.tar", "w") as tar:  # the wheels are compressed already
            for wheel in sorted((Path(tmp) / "wheels").glob("*.whl")):
                tar.add(wheel, arcname=wheel.name)
        pieces = cut(Path(tmp) / "server.tar", out / "server", PIECE_MIB * 2**20)
    return [[out / "worker", out / "runtime"], *[[piece] for piece in pieces]]


def commands(carried: list[list[Path]]) -> list[tuple[list[str], str]]:
    """The device commands, in order, each with the paths it carries (as ``build`` returned them): each finds what
    the ones before left in /tmp."""
    rel = [[str(path.relative_to(ROOT)) for path in paths] for paths in carried]
    env = "export PYTHONPATH=/tmp/site:$PWD/client PYTHONUNBUFFERED=1"  # client/: the client package (the launcher's)
    first = (f"{INSTALL} {rel[0][0]}/*.whl && tar -xJf {rel[0][1]}/jre.tar.xz -C /tmp && {env} && "
             "python3 -m bench.gpu --out $OUT/gpu --parts decoders worker context")
    keep = [f"mkdir -p {PIECES} && cp {paths[0]} {PIECES}/" for paths in rel[1:]]
    keep[-1] += (f" && cat {PIECES}/part-* | tar -x -C {PIECES} && {INSTALL} {PIECES}/*.whl && {env} "
                 "JAVA_HOME=/tmp/jre && python3 -m bench.gpu --out $OUT/gpu-server --parts server")
    return [(rel[0], first), *zip(rel[1:], keep, strict=True)]


GPU_SIM_NOTE = "the GPU machine's Python packages, linked from this venv (deploy/gpu_machine_packages.txt)"


def gpu_machine_venv(root: Path) -> Path:
    """A bare venv of this interpreter whose site-packages holds links to this venv's distributions that the GPU
    machine also has (nothing else); returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    site = next((root / "lib").glob("python3*/site-packages"))
    wanted = machine_packages()
    for dist in metadata.distributions():
        if normalized(dist.metadata["Name"]) not in wanted or not dist.files:
            continue
        base = Path(dist.locate_file(""))
        for top in {f.parts[0] for f in dist.files if not f.parts[0].startswith("..")}:
            link = site / top
            if not link.exists() and (base / top).exists():
                link.symlink_to(base / top)
    return root / "bin" / "python"


def check() -> dict:
    """The dry run: returns bench.gpu's smoke report, run from an empty folder holding only the bundle."""
    with tempfile.TemporaryDirectory(prefix="fmvae-gpu-bundle-") as tmp:
        tmp_path = Path(tmp)
        bundle = tmp_path / "bundle"
        build(bundle, python_version=None)  # this interpreter's wheels: the same packages and versions
        python = gpu_machine_venv(tmp_path / "venv")
        site = tmp_path / "site"
        site.mkdir()
        server = tmp_path / "server"
        server.mkdir()
        with open(tmp_path / "server.tar", "wb") as joined:  # the pieces joined as `cat part-*` joins them there
            for piece in sorted((bundle / "server").glob("part-*")):
                joined.write(piece.read_bytes())
        with tarfile.open(tmp_path / "server.tar") as tar:
            tar.extractall(server, filter="data")
        wheels = [str(p) for folder in (bundle / "worker", server) for p in sorted(folder.glob("*.whl"))]
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--target", str(site), *wheels], check=True)
        with tarfile.open(bundle / "runtime" / "jre.tar.xz") as tar:
            tar.extractall(tmp_path, filter="tar")
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
        env |= {"PYTHONPATH": f"{site}:{ROOT}:{ROOT / 'client'}", "JAVA_HOME": str(tmp_path / "jre"),
                "PYTHONUNBUFFERED": "1", "PATH": f"{tmp_path / 'venv' / 'bin'}:{env.get('PATH', '')}"}
        result = subprocess.run([str(python), "-m", "bench.gpu", "--smoke", "--out", str(tmp_path / "report")],
                                cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            raise BundleError(f"bench.gpu --smoke failed from the bundle:\n{result.stderr[-4000:]}")
        return json.loads((tmp_path / "report" / "gpu_bench.json").read_text())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m deploy.gpu_bundle", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("step", choices=["build", "check"])
    p.add_argument("--out", type=Path, default=OUT, help="where build puts the parts (default %(default)s)")
    args = p.parse_args(argv)
    try:
        if args.step == "check":
            report = check()
            answered = {host: "every route answered" if r.get("all_answered") else r
                        for host, r in report["server"].items()}
            print(f"dry run passed: bench.gpu --smoke from an empty folder with {GPU_SIM_NOTE} and the bundle; "
                  f"parts {report['parts_seconds']}; the hosts (TorchServe on the bundled Java): {answered}")
            return 0
        carried = build(args.out.resolve())
        tree = tree_size()
        totals = [(tree + sum(size(p) for p in paths)) / 2**20 for paths in carried]
        print(f"the working tree: {tree / 2**20:.1f} MiB; device commands, in order, each with what it carries:")
        for i, ((carry, command), total) in enumerate(zip(commands(carried), totals, strict=True), 1):
            print(f"  {i}. {total:.1f} MiB with the tree ({'fits' if total < LIMIT_MIB else 'OVER'} the {LIMIT_MIB} "
                  f"MiB of a device command); carry {json.dumps(carry)}:\n     {command}")
        return 0 if max(totals) < LIMIT_MIB else 1
    except (BundleError, subprocess.CalledProcessError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
