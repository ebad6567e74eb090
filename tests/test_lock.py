"""The lock files follow what they were made from (pyproject.toml; the images' from the venv lock): a dependency
changed without `make lock` fails here; every locked package is pinned with hashes; each image's lock holds what
its host needs at the venv's versions."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from deploy import lock

LOCKS = [(lock.VENV_LOCK, lock.pyproject_requirements),
         *((lock.host_lock(host, cpu), lambda host=host: lock.image_source(host))
           for host in lock.IMAGE_HOSTS for cpu in (False, True))]


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
    for host, (requirements, runtimes) in lock.IMAGE_HOSTS.items():
        image = pinned(lock.host_lock(host)) | pinned(lock.host_lock(host, cpu=True))
        assert {name: version for name, version in venv.items() if name in image} == image  # the venv's versions
        for text in requirements:
            name = Requirement(text).name.lower()
            assert name in image or (name in lock.RUNTIMES and name not in runtimes), (host, text)
        assert set(pinned(lock.host_lock(host, cpu=True))) == set(runtimes)


def test_each_image_lock_holds_what_its_packages_need():
    """Every dependency pip reports for a package of an image lock is in that lock (torch's only where torch is)."""
    for host in lock.IMAGE_HOSTS:
        image = pinned(lock.host_lock(host)) | pinned(lock.host_lock(host, cpu=True))
        for name in image:
            for text in metadata.requires(name) or []:
                requirement = Requirement(text)
                if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                    assert requirement.name.lower().replace("_", "-") in image, (host, name, text)
    assert "kserve" not in pinned(lock.host_lock("torchserve")) and "torchserve" not in pinned(lock.host_lock("kserve"))


def test_the_closure_follows_the_via_annotations():
    locked = lock.entries(["a==1", "    # via -r requirements.in", "b==1", "    # via a", "c==1", "    # via",
                           "    #   b", "    #   z", "d==1", "    # via z"])
    assert [lock.name_of(e) for e in lock.closure(locked, {"a"})] == ["a", "b", "c"]
    assert [lock.name_of(e) for e in lock.closure(locked, {"z"})] == ["c", "d"]


def test_a_changed_dependency_makes_the_lock_stale():
    recorded = lock.VENV_LOCK.read_text().splitlines()[0].removeprefix(lock.SOURCE_LINE)
    assert lock.source_digest(lock.pyproject_requirements()) == recorded
    assert lock.source_digest([*lock.pyproject_requirements(), "six>=1.16"]) != recorded
    changed = [r.replace("numpy>=1.26", "numpy>=1.27") for r in lock.pyproject_requirements()]
    assert lock.source_digest(changed) != recorded
