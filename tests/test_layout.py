"""The layout rule: a TorchServe worker imports only ``handlers`` and ``runtime`` of this project, so that an
archive (which packs those two folders whole) holds every line of project code a worker runs."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT = {p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(".") and any(p.glob("*.py"))}
ALLOWED = {"handlers": {"handlers", "runtime"}, "runtime": {"runtime"}}


def project_imports(source: str, package: str) -> set[str]:
    """The project packages a module of ``package`` imports, anywhere in its code (relative imports are its own)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            found.add(package if node.level else node.module.split(".")[0])
    return found & PROJECT


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_worker_packages_import_only_themselves_and_runtime(package):
    modules = sorted((ROOT / package).rglob("*.py"))
    assert modules
    for path in modules:
        imported = project_imports(path.read_text(), package)
        assert imported <= ALLOWED[package], f"{path.relative_to(ROOT)} imports {sorted(imported - ALLOWED[package])}"


def test_the_import_check_sees_every_form():
    source = ("import training.model\nfrom export import build\nfrom . import sibling\nimport numpy\n"
              "def late():\n    import bench.serving as s\n    from handlers.settings import MODELS\n")
    assert project_imports(source, "runtime") == {"training", "export", "runtime", "bench", "handlers"}
    assert {"training", "export", "bench", "handlers", "runtime"} <= PROJECT
