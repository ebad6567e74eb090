"""Live roll-outs (``python -m serving rollout`` / ``rollback``, ``serving/rollout.py``) on both hosts, as an
operator runs them against a running launcher: 16 clients that keep sending lose nothing across a roll-out, failed
roll-outs and a rollback; every answer is of one build and each client sees the builds switch once per roll-out;
memory comes back; bad input is one line and changes nothing. The 2-d routes roll from the released 2-d export to
a small 2-d model of the tests' own (tests/conftest.py) and back."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from runtime.manifest import Manifest
from serving.routes import ROUTES
from tests.conftest import ARTIFACTS, damaged_export
from tests.launching import Clients, Launcher

pytestmark = pytest.mark.integration  # real hosts
ROOT = Path(__file__).resolve().parent.parent
SPACE_2D = tuple(name for name, route in ROUTES.items() if route.export == "export-2d")
RELEASED_2D = ARTIFACTS.parent / "export-2d"
DECODE_2D = {"latents": [[0.5, -0.5]], "format": "npy"}


def rollout(work: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -m serving rollout|rollback ...`` as an operator types it."""
    return subprocess.run([sys.executable, "-m", "serving", *args, "--work-dir", str(work)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def serving_memory(leader: psutil.Process) -> int:
    """Resident memory of the host's serving processes (TorchServe's workers, the KServe host's processes)."""
    processes = [p for p in leader.children(recursive=True) if "model_service_worker" in " ".join(p.cmdline())
                 or p.name().startswith("kserve-proc")]
    return sum(p.memory_info().rss for p in processes)


@pytest.mark.parametrize("host", ["torchserve", "kserve"])
def test_rollouts_and_a_rollback_under_constant_senders_lose_nothing(host, current_store, tmp_path, artifacts_2d):
    work = tmp_path / "work"
    kserve = ("--server", "kserve", "--export-store", str(ARTIFACTS.parent), "--processes", "2")
    launched = Launcher(current_store, tmp_path, *(kserve if host == "kserve" else ()), "--no-explorer",
                        "--work-dir", str(work), models=SPACE_2D)
    try:
        launched.wait_ready()
        released = Manifest.read(RELEASED_2D).identity
        small = Manifest.read(artifacts_2d).identity
        time.sleep(1)
        memory = serving_memory(launched.leader)
        clients = Clients(launched.url, DECODE_2D, 16, route="decode2d")
        try:
            time.sleep(1)
            done = rollout(work, "rollout", str(artifacts_2d))
            assert done.returncode == 0, done.stdout + done.stderr
            assert f"decode2d {small}" in done.stdout.splitlines()[-1] and "switched" in done.stdout
            builds = json.loads((work / "builds.json").read_text())
            assert {builds[r]["build"] for r in SPACE_2D} == {small}
            assert builds["decode2d"]["previous"]["build"] == released
            health = subprocess.run([sys.executable, "-m", "serving.health", "--server", host, "--url", launched.url,
                                     "--management-url", f"http://127.0.0.1:{launched.config.torchserve.management_port}",
                                     "--work-dir", str(work), "--models", *SPACE_2D],
                                    cwd=ROOT, capture_output=True, text=True, timeout=60)
            assert health.returncode == 0 and f"builds: {small} (sample2d" in health.stdout, health.stdout
            metrics = urllib.request.urlopen(f"http://127.0.0.1:{launched.config.metrics_port}/metrics").read()
            assert f'fmvae_serving_build{{build="{small}",model="decode2d"}} 1.0' in metrics.decode()
            for folder, why in ((damaged_export(RELEASED_2D, tmp_path, False), "not an export"),
                                (damaged_export(RELEASED_2D, tmp_path, True), "the new build was refused")):
                failed = rollout(work, "rollout", str(folder))
                assert failed.returncode == 1 and why in failed.stdout.splitlines()[-1], failed.stdout
                assert failed.stdout.splitlines()[-1].startswith("error: ")
                assert json.loads((work / "builds.json").read_text()) == builds  # nothing changed
            back = rollout(work, "rollback")
            assert back.returncode == 0 and f"decode2d {released}" in back.stdout.splitlines()[-1], back.stdout
            time.sleep(1)
        finally:
            clients.stop()
        assert clients.outcomes and {o[:2] for o in clients.outcomes} == {("http", 200)}, \
            [o for o in clients.outcomes if o[:2] != ("http", 200)][:3]
        for seen in clients.builds:  # each client: the released build, the small one, the released one again
            changes = [b for a, b in zip(seen, seen[1:], strict=False) if a != b]
            assert changes in ([small, released], [small], [released], []), changes
        assert {b for seen in clients.builds for b in seen} == {released, small}
        time.sleep(1)
        assert serving_memory(launched.leader) < 1.1 * memory  # the small model's build freed
    finally:
        launched.kill()


def test_bad_rollout_requests_are_one_line_and_change_nothing(launcher, tmp_path):
    work = tmp_path / "work"
    none = rollout(tmp_path / "nowhere", "rollout", str(RELEASED_2D))
    assert none.returncode == 1 and none.stdout.startswith("error: no running service in ")
    launched = launcher("--server", "kserve", "--export-store", str(ARTIFACTS.parent), "--processes", "1",
                        "--no-explorer", "--work-dir", str(work))
    launched.wait_ready()
    before = (work / "builds.json").read_text()
    cases = [(str(tmp_path / "missing"), (), "no such folder"),
             (str(tmp_path), (), "not an export"),
             (str(ARTIFACTS), ("--routes", "decode2d"), "decode2d: not served here"),
             (str(ARTIFACTS), (), "serves sample, interpolate already"),
             (str(RELEASED_2D), (), "no served route takes 2-d latents"),
             (str(RELEASED_2D), ("--routes", "sample"), "the clients of sample (64-d) send other latents")]
    for folder, routes, why in cases:
        result = rollout(work, "rollout", folder, *routes)
        lines = result.stdout.splitlines()
        assert result.returncode != 0 and lines and lines[-1].startswith("error: ") and why in lines[-1], \
            result.stdout + result.stderr
    assert rollout(work, "rollback").stdout.splitlines()[-1].startswith("error: nothing to roll back to")
    assert (work / "builds.json").read_text() == before


def test_a_canary_gets_its_share_then_is_promoted_or_stopped_by_the_rule(current_store, tmp_path, artifacts_2d):
    """The KServe host sends a canary its share of the requests, compares both builds' failures and p50s, and
    promotes it when the rule holds; when it does not (a p50 bound no build meets), the canary stops and the
    serving build serves on."""
    work = tmp_path / "work"
    launched = Launcher(current_store, tmp_path, "--server", "kserve", "--export-store", str(ARTIFACTS.parent),
                        "--processes", "2", "--no-explorer", "--work-dir", str(work), models=SPACE_2D)
    try:
        launched.wait_ready()
        released, small = (Manifest.read(folder).identity for folder in (RELEASED_2D, artifacts_2d))
        clients = Clients(launched.url, DECODE_2D, 8, route="decode2d")
        try:
            stopped = rollout(work, "rollout", str(artifacts_2d), "--canary", "30", "--canary-seconds", "3",
                              "--promote-if", "0.000001")
            assert stopped.returncode == 1 and "canary not promoted" in stopped.stdout.splitlines()[-1]
            assert "new build" in stopped.stdout and " 0 failed" in stopped.stdout
            promoted = rollout(work, "rollout", str(artifacts_2d), "--canary", "30", "--canary-seconds", "3",
                               "--promote-if", "100")
            assert promoted.returncode == 0 and "canary promoted" in promoted.stdout, promoted.stdout
        finally:
            clients.stop()
        assert {o[:2] for o in clients.outcomes} == {("http", 200)}
        counts = re.search(r"serving build (\d+) answers, .*; new build (\d+) answers", stopped.stdout)
        share = int(counts.group(2)) / (int(counts.group(1)) + int(counts.group(2)))
        assert 0.2 < share < 0.4, stopped.stdout  # the canary's 30% of the answers while it ran
        assert json.loads((work / "builds.json").read_text())["decode2d"]["build"] == small
        assert {released, small} <= {b for client in clients.builds for b in client}
    finally:
        launched.kill()
