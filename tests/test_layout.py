"""The layout rules. A TorchServe worker imports only ``handlers`` and ``runtime`` of this project, so that an
archive (which packs those two folders whole) holds every line of project code a worker runs and nothing of the
host side (``serving``); the launcher is split by concern; ``SystemExit`` is raised only where a command line
ends (a ``__main__`` module or an ``if __name__ == "__main__"`` block), so every stage can be called as a
library."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT = {p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(".") and any(p.glob("*.py"))}
ALLOWED = {"handlers": {"handlers", "runtime"}, "runtime": {"runtime"}}
SOURCES = sorted(p for package in PROJECT - {"tests"} for p in (ROOT / package).rglob("*.py"))
MAX_SERVING_LINES = 250


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


def test_the_client_package_imports_nothing_of_the_project():
    """``client/`` installs on its own (``pip install ./client``): it may not import the project's packages."""
    modules = sorted((ROOT / "client" / "fmvae_client").glob("*.py"))
    assert len(modules) >= 4
    for path in modules:
        assert not project_imports(path.read_text(), "fmvae_client"), path.relative_to(ROOT)


def test_the_import_check_sees_every_form():
    source = ("import training.model\nfrom export import build\nfrom . import sibling\nimport numpy\n"
              "def late():\n    import bench.serving as s\n    from serving.settings import MODELS\n")
    assert project_imports(source, "runtime") == {"training", "export", "runtime", "bench", "serving"}
    assert {"training", "export", "bench", "handlers", "runtime", "serving"} <= PROJECT


def test_the_host_side_is_not_in_the_worker_package():
    host = {"settings.py", "server.py", "archive.py", "watchdog.py", "health.py", "__main__.py", "log4j2.xml"}
    assert not host & {p.name for p in (ROOT / "handlers").iterdir()}


def test_no_launcher_module_is_long():
    lengths = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in (ROOT / "serving").rglob("*.py")}
    assert lengths and max(lengths.values()) <= MAX_SERVING_LINES, lengths


def system_exits_outside_a_command_line(source: str, is_main_module: bool) -> list[int]:
    """Lines that raise or name SystemExit outside a ``__main__`` module and its ``if __name__ ==
    "__main__"`` blocks."""
    if is_main_module:
        return []
    tree = ast.parse(source)
    allowed = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "__name__" in ast.unparse(node.test) and "__main__" in ast.unparse(node.test):
            allowed |= {id(n) for n in ast.walk(node)}
    return [node.lineno for node in ast.walk(tree)
            if isinstance(node, ast.Name) and node.id == "SystemExit" and id(node) not in allowed]


def test_system_exit_only_where_a_command_line_ends():
    found = {str(p.relative_to(ROOT)): lines for p in SOURCES
             if (lines := system_exits_outside_a_command_line(p.read_text(), p.name == "__main__.py"))}
    assert not found, f"SystemExit in library code (raise the package's error instead): {found}"


def test_the_system_exit_check_can_fail():
    library = "def main():\n    raise SystemExit('error: x')\n"
    guarded = "def main():\n    pass\n\nif __name__ == '__main__':\n    raise SystemExit(main())\n"
    assert system_exits_outside_a_command_line(library, False) == [2]
    assert system_exits_outside_a_command_line(guarded, False) == []
    assert system_exits_outside_a_command_line(library, True) == []


def test_make_help_lines_up_every_target():
    """Every description starts in the same column, the longest target name included."""
    lines = subprocess.run(["make", "-s", "help"], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    starts = {len(line) - len(line.split(maxsplit=2)[2]) for line in lines.splitlines()}
    assert len(starts) == 1, lines
