"""The lock files, with hashes: ``python -m deploy.lock`` (``make lock``) writes them, ``make setup`` and the images
install from them, and ``tests/test_lock.py`` fails when one no longer follows what it was made from.

- ``requirements.lock``: the venv (``pyproject.toml``'s dependencies and every extra), every package pinned
  with its hashes (``pip-compile --generate-hashes``; torch is the 2.13.0 CPU wheel on this machine's disk).
- ``deploy/requirements-<host>.lock``, one per image host (``IMAGE_HOSTS``): the host's packages and everything
  they need, taken from the venv lock (the same versions and hashes: an image runs what the tests ran), without
  torch and onnxruntime; ``deploy/requirements-<host>-cpu.lock``: the runtimes that host's CPU image takes (the
  TorchServe one torch and onnxruntime, the KServe one onnxruntime alone: its workers run ONNX on the CPU). The
  GPU images take torch 2.13.0 (CUDA) and onnxruntime-gpu by exact pin from PyPI, then the host's lock: hashing
  the CUDA wheels here would mean downloading several GB of them. ``--images`` rewrites only these, from the venv
  lock (no resolution, no network).

Each lock starts with a line holding the SHA-256 of what it was made from, which the test compares.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from deploy.errors import LockError

ROOT = Path(__file__).resolve().parent.parent
VENV_LOCK = ROOT / "requirements.lock"
SOURCE_LINE = "# compiled from: sha256 "
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def normal(name: str) -> str:
    """A package name as the locks compare them."""
    return name.strip().lower().replace("_", "-")


def requirement_name(requirement: str) -> str:
    return normal(re.split(r"[=<>!~\[; ]", requirement, maxsplit=1)[0])


def pyproject_requirements() -> list[str]:
    """What the venv lock is compiled from: the project's dependencies and every extra (``make setup``)."""
    extras = PROJECT["optional-dependencies"]
    return list(dict.fromkeys([*PROJECT["dependencies"], *(r for name in sorted(extras) for r in extras[name])]))


def runtime_pin(name: str) -> str:
    """``pyproject.toml``'s exact pin of ``name`` (torch, onnxruntime): the venv's, so the images'."""
    return next(r for r in PROJECT["dependencies"] if requirement_name(r) == name and "==" in r)


RUNTIMES = ("torch", "onnxruntime")  # the GPU images take these by pin (CUDA builds), never from a host's lock
# Each image host: (what its image serves with, the runtimes its CPU image takes from its -cpu lock). The core
# dependencies are what serving needs; the TorchServe image takes its extra instead of kserve, the KServe image
# leaves torch out on the CPU (its workers run the ONNX backends; the GPU image adds torch for TorchScript); the Ray
# host's image is the KServe image with the ray extra (its fronts, and the pods of a KubeRay cluster).
IMAGE_HOSTS = {
    "torchserve": ([r for r in PROJECT["dependencies"] if requirement_name(r) != "kserve"]
                   + PROJECT["optional-dependencies"]["torchserve"], ("torch", "onnxruntime")),
    "kserve": ([r for r in PROJECT["dependencies"] if requirement_name(r) != "torch"], ("onnxruntime",)),
    "ray": ([r for r in PROJECT["dependencies"] if requirement_name(r) != "torch"]
            + PROJECT["optional-dependencies"]["ray"], ("onnxruntime",)),
}


def host_lock(host: str, cpu: bool = False) -> Path:
    """``deploy/requirements-<host>.lock``, or its ``-cpu`` runtimes."""
    return ROOT / "deploy" / f"requirements-{host}{'-cpu' if cpu else ''}.lock"


def source_digest(requirements: list[str]) -> str:
    return hashlib.sha256(json.dumps(requirements).encode()).hexdigest()


def body(path: Path) -> list[str]:
    """A lock's lines after its header."""
    return [line for line in path.read_text().splitlines() if not line.startswith("# ")]


def image_source(host: str) -> list[str]:
    """What a host's image locks are made from: its requirements, its CPU runtimes and the venv lock's body."""
    requirements, runtimes = IMAGE_HOSTS[host]
    return [*requirements, *runtimes, *body(VENV_LOCK)]


def compile_lock(requirements: list[str], out: Path) -> list[str]:
    """``pip-compile --generate-hashes`` of ``requirements``; returns the lock's lines. The pins of ``out`` as it is
    are kept where they still satisfy the requirements (pip-compile's preference for an existing output)."""
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "requirements.in"
        source.write_text("\n".join(requirements) + "\n")
        if out.is_file():
            (Path(tmp) / "out.lock").write_text("\n".join(body(out)) + "\n")
        result = subprocess.run([sys.executable, "-m", "piptools", "compile", "--generate-hashes", "--no-header",
                                 "--allow-unsafe", "--strip-extras", "--quiet", "--no-emit-index-url",
                                 "--no-emit-find-links", "-o", str(Path(tmp) / "out.lock"),
                                 str(source)], capture_output=True, text=True)
        if result.returncode != 0:
            raise LockError(f"pip-compile failed for {out}:\n{result.stderr[-3000:]}")
        return (Path(tmp) / "out.lock").read_text().splitlines()


def entries(lines: list[str]) -> list[list[str]]:
    """The lock's entries: each a ``name==version`` line with its hash and comment lines."""
    found: list[list[str]] = []
    for line in lines:
        if line and not line.startswith((" ", "#")):
            found.append([line])
        elif found:
            found[-1].append(line)
    return found


def name_of(entry: list[str]) -> str:
    return normal(entry[0].split("==")[0])


def dependents(entry: list[str]) -> set[str]:
    """The packages pip-compile's ``# via`` annotation names as needing this one (``-r`` roots left out)."""
    names, via = set(), False
    for line in entry[1:]:
        text = line.strip().removeprefix("#").strip()
        if text.startswith("via"):
            via, text = True, text.removeprefix("via").strip()
        if via and text and not text.startswith("-r"):
            names.add(normal(text))
    return names


def closure(locked: list[list[str]], roots: set[str]) -> list[list[str]]:
    """The entries of ``roots`` and of everything they need, in the lock's order: a package is needed when a
    needed package depends on it (the lock's ``# via`` lists every dependent)."""
    needed = set(roots)
    while True:
        more = {name_of(e) for e in locked if name_of(e) not in needed and dependents(e) & needed}
        if not more:
            return [e for e in locked if name_of(e) in needed]
        needed |= more


def write(path: Path, digest: str, what: str, lines: list[str]) -> None:
    path.write_text(f"{SOURCE_LINE}{digest}\n# {what}; refresh with `make lock`.\n" + "\n".join(lines) + "\n")


def lock_images() -> None:
    """Each host's image locks, from the venv lock."""
    locked = entries(body(VENV_LOCK))
    found = {name_of(e) for e in locked}
    for host, (requirements, runtimes) in IMAGE_HOSTS.items():
        roots = {requirement_name(r) for r in requirements} | set(runtimes)
        if roots - found:
            raise LockError(f"{', '.join(sorted(roots - found))} not in {VENV_LOCK.name}: run `make lock`")
        needed = closure(locked, roots)
        digest = source_digest(image_source(host))
        write(host_lock(host), digest, f"the {host} image's packages besides torch and onnxruntime, with hashes",
              [line for e in needed if name_of(e) not in RUNTIMES for line in e])
        write(host_lock(host, cpu=True), digest, f"the {host} CPU image's {' and '.join(runtimes)}, with hashes",
              [line for e in needed if name_of(e) in runtimes for line in e])
        print(f"wrote {host_lock(host).relative_to(ROOT)} ({len(needed)} packages with the CPU runtimes)")


def main(argv: list[str] | None = None) -> int:
    cli = argparse.ArgumentParser(prog="python -m deploy.lock", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--images", action="store_true", help="only the image locks, from the venv lock")
    args = cli.parse_args(argv)
    try:
        if not args.images:
            venv = pyproject_requirements()
            write(VENV_LOCK, source_digest(venv), "pyproject.toml's dependencies and every extra, with hashes",
                  compile_lock(venv, VENV_LOCK))
            print(f"wrote {VENV_LOCK.name}")
        lock_images()
    except LockError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
