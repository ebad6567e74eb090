"""The lock files, with hashes: ``python -m deploy.lock`` (``make lock``) writes them, ``make setup`` and the image
install from them, and ``tests/test_lock.py`` fails when one no longer follows what it was compiled from.

- ``requirements.lock``: the venv (``pyproject.toml``'s dependencies and every extra), every package pinned
  with its hashes (``pip-compile --generate-hashes``; torch is the 2.13.0 CPU wheel on this machine's disk).
- ``deploy/requirements-serve.lock``: the image (``deploy/requirements-serve.txt`` with torch and onnxruntime for
  the CPU image), without the two; ``deploy/requirements-cpu.lock``: those two, for the CPU image. The GPU image
  takes torch 2.13.0 (CUDA) and onnxruntime-gpu by exact pin from PyPI, then the serve lock: hashing the CUDA
  wheels here would mean downloading several GB of them.

Each lock starts with a line holding the SHA-256 of what it was compiled from, which the test compares.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from deploy.errors import LockError

ROOT = Path(__file__).resolve().parent.parent
VENV_LOCK = ROOT / "requirements.lock"
SERVE_IN = ROOT / "deploy" / "requirements-serve.txt"
SERVE_LOCK = ROOT / "deploy" / "requirements-serve.lock"
CPU_LOCK = ROOT / "deploy" / "requirements-cpu.lock"
SOURCE_LINE = "# compiled from: sha256 "


def pyproject_requirements() -> list[str]:
    """What the venv lock is compiled from: the project's dependencies and every extra (``make setup``)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    return list(dict.fromkeys([*project["dependencies"], *(r for name in sorted(extras) for r in extras[name])]))


def runtime_pin(name: str) -> str:
    """``pyproject.toml``'s exact pin of ``name`` (torch, onnxruntime): the venv's, so the images'."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return next(r for r in project["dependencies"] if r.startswith(f"{name}=="))


IMAGE_RUNTIMES = (runtime_pin("torch"), runtime_pin("onnxruntime"))  # the CPU image's; the GPU image pins its own


def source_digest(requirements: list[str]) -> str:
    return hashlib.sha256(json.dumps(requirements).encode()).hexdigest()


def serve_requirements() -> list[str]:
    """What the image locks are compiled from: the serve requirements and the CPU image's runtimes."""
    lines = [line.split("#")[0].strip() for line in SERVE_IN.read_text().splitlines()]
    return [*filter(None, lines), *IMAGE_RUNTIMES]


def compile_lock(requirements: list[str], out: Path) -> list[str]:
    """``pip-compile --generate-hashes`` of ``requirements``; returns the lock's lines."""
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "requirements.in"
        source.write_text("\n".join(requirements) + "\n")
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
    return entry[0].split("==")[0].strip().lower()


def write(path: Path, digest: str, what: str, lines: list[str]) -> None:
    path.write_text(f"{SOURCE_LINE}{digest}\n# {what}; refresh with `make lock`.\n" + "\n".join(lines) + "\n")


def main() -> int:
    try:
        lock_all()
    except LockError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def lock_all() -> None:
    """Every lock file, from what it follows now."""
    venv = pyproject_requirements()
    write(VENV_LOCK, source_digest(venv), "pyproject.toml's dependencies and dev extra, with hashes",
          compile_lock(venv, VENV_LOCK))
    serve = serve_requirements()
    locked = entries(compile_lock(serve, SERVE_LOCK))
    runtimes = {r.split("==")[0] for r in IMAGE_RUNTIMES}
    write(SERVE_LOCK, source_digest(serve), "the image's packages besides torch and onnxruntime, with hashes",
          [line for entry in locked if name_of(entry) not in runtimes for line in entry])
    write(CPU_LOCK, source_digest(serve), "torch and onnxruntime for the CPU image, with hashes",
          [line for entry in locked if name_of(entry) in runtimes for line in entry])
    print(f"wrote {VENV_LOCK.name}, {SERVE_LOCK.relative_to(ROOT)}, {CPU_LOCK.relative_to(ROOT)}")


if __name__ == "__main__":
    raise SystemExit(main())
