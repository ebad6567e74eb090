"""The lock files follow what they were compiled from (pyproject.toml, deploy/requirements-serve.txt): a
dependency changed without `make lock` fails here; and every locked package is pinned with hashes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from deploy import lock

LOCKS = [(lock.VENV_LOCK, lock.pyproject_requirements), (lock.SERVE_LOCK, lock.serve_requirements),
         (lock.CPU_LOCK, lock.serve_requirements)]


def pinned(path: Path) -> dict[str, str]:
    return {m.group(1).lower(): m.group(2) for m in re.finditer(r"^([A-Za-z0-9_.-]+)==(\S+)", path.read_text(), re.M)}


@pytest.mark.parametrize(("path", "sources"), LOCKS, ids=[p.name for p, _ in LOCKS])
def test_each_lock_was_compiled_from_what_it_follows_now(path, sources):
    first = path.read_text().splitlines()[0]
    assert first == lock.SOURCE_LINE + lock.source_digest(sources()), f"{path.name} is stale: run `make lock`"


@pytest.mark.parametrize("path", [p for p, _ in LOCKS], ids=[p.name for p, _ in LOCKS])
def test_every_locked_package_is_pinned_with_hashes(path):
    entries = lock.entries([line for line in path.read_text().splitlines() if not line.startswith("#")])
    assert entries and all("==" in entry[0] for entry in entries)
    assert all(any("--hash=sha256:" in line for line in entry) for entry in entries)


def test_the_locks_satisfy_their_requirements():
    venv = pinned(lock.VENV_LOCK)
    for text in lock.pyproject_requirements():
        requirement = Requirement(text)
        version = venv[requirement.name.lower().replace("_", "-")]
        assert requirement.specifier.contains(version, prereleases=True), (text, version)
    image = pinned(lock.SERVE_LOCK) | pinned(lock.CPU_LOCK)
    for text in lock.serve_requirements():
        requirement = Requirement(text)
        assert requirement.specifier.contains(image[requirement.name.lower()], prereleases=True), text


def test_a_changed_dependency_makes_the_lock_stale():
    recorded = lock.VENV_LOCK.read_text().splitlines()[0].removeprefix(lock.SOURCE_LINE)
    assert lock.source_digest(lock.pyproject_requirements()) == recorded
    assert lock.source_digest([*lock.pyproject_requirements(), "six>=1.16"]) != recorded
    changed = [r.replace("numpy>=1.26", "numpy>=1.27") for r in lock.pyproject_requirements()]
    assert lock.source_digest(changed) != recorded
