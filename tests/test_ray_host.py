"""The Ray host on a local multi-node cluster (a head and worker nodes in the host's temp dir): the same bytes as the
KServe host for every route's seeded example, replicas placed on more than one node, a worker node killed under
constant senders without a lost request, autoscaling up under load and back down, and a stop that leaves no Ray
process. (Every test that takes ``api`` also runs through this host: tests/conftest.py.)"""

from __future__ import annotations

import json
import re
import signal
import time
import urllib.request
from collections import Counter

import psutil
import pytest

from handlers.service import MODEL_HEADER
from serving.ray.host import OWNER_STATUS, RayHost, read_status, replicas
from serving.routes import ROUTES, route_example
from serving.settings import KServeConfig, RayConfig, ServerConfig
from serving.watchdog import members
from tests.conftest import ARTIFACTS, post, ray_processes
from tests.launching import Clients, wait_until

pytestmark = pytest.mark.integration  # a real Ray cluster behind a real KServe ModelServer


def replica_nodes(host: RayHost, route: str) -> list[str]:
    """The worker node (its raylet's socket name: ``raylet.1``, ``raylet.2``) of each running replica of
    ``route`` in the host's cluster: a replica is a child of its node's raylet (whose command line names the
    host's temp dir) and says its deployment in its process title."""
    nodes = []
    for process in psutil.process_iter(["cmdline"]):
        if " ".join(process.info["cmdline"] or ()).startswith(f"ray::ServeReplica:{route}:"):
            raylet = " ".join(process.parent().cmdline())
            if str(host.tmp) in raylet:
                nodes.append(re.search(r"--raylet_socket_name=\S+/(raylet[.\d]*)", raylet).group(1))
    return nodes


def kill_node(host: RayHost, node: str) -> int:
    """SIGKILL a worker node of the host's cluster: its raylet and everything under it (replicas, agents); how
    many processes went."""
    (raylet,) = [p for p in psutil.process_iter(["cmdline"]) if str(host.tmp) in " ".join(p.info["cmdline"] or ())
                 and re.search(rf"--raylet_socket_name=\S+/{re.escape(node)}(\s|$)", " ".join(p.info["cmdline"]))]
    victims = [raylet, *raylet.children(recursive=True)]
    for process in victims:
        process.send_signal(signal.SIGKILL)
    return len(victims)


def running(host: RayHost, route: str) -> int:
    return replicas(read_status(host.work_dir / OWNER_STATUS)).get(route, {}).get("RUNNING", 0)


def metric(host: RayHost, name: str, labels: str) -> float:
    with urllib.request.urlopen(host.metrics_url, timeout=10) as response:
        text = response.read().decode()
    found = re.search(rf"^{name}{{{labels}}} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_every_route_answers_the_kserve_hosts_bytes(kserve_host, ray_host, route):
    operation = ROUTES[route].operation
    body = route_example(route, ARTIFACTS.parent) | {"format": "npy" if operation != "encode" else "json"}
    ks, ray = post(kserve_host, route, body), post(ray_host, route, body)
    assert (ks[0], ray[0]) == (200, 200), (ks[2][:200], ray[2][:200])
    assert ray[2] == ks[2]
    for header in ("content-type", MODEL_HEADER.lower(), "x-seed"):
        assert ray[1].get(header) == ks[1].get(header), header


def test_a_request_without_a_seed_gets_one_at_the_front(ray_host):
    """The front draws the seed (so that a retry on another replica answers the same bytes): the answer names it,
    and the same body with that seed answers the same bytes."""
    status, headers, first = post(ray_host, "sample", {"n": 2, "format": "npy"})
    assert status == 200
    again = post(ray_host, "sample", {"n": 2, "format": "npy", "seed": int(headers["x-seed"])})
    assert again[2] == first


def test_errors_limits_and_health_are_the_kserve_hosts(ray_host, kserve_host):
    for body in (b"{", json.dumps({"n": 0}).encode(), json.dumps({"n": 1, "x": 1}).encode()):
        assert post(ray_host, "sample", body)[::2] == post(kserve_host, "sample", body)[::2]
    too_big = b"x" * (ray_host.config.max_request_size + 1)
    status, _, error = post(ray_host, "sample", too_big)
    assert (status, json.loads(error)["reason"]) == (413, "body_too_large")
    probe = ray_host.probe()
    assert RayHost.problems(probe) == []
    (note,) = [n for n in RayHost.notes(probe) if "replicas" in n]
    assert note.startswith("2 worker nodes; replicas: ") and "sample 1 running" in note


def test_replicas_run_on_more_than_one_node(ray_host):
    placed = {route: replica_nodes(ray_host, route) for route in ray_host.config.models}
    assert all(placed.values()), placed  # every route runs a replica (more where earlier tests' load scaled it up)
    nodes = Counter(node for found in placed.values() for node in found)
    assert set(nodes) == {"raylet.1", "raylet.2"}, nodes  # never the head (it offers no CPU)
    assert wait_until(lambda: metric(ray_host, "fmvae_serving_replicas", 'model="sample",state="running"')
                      == len(replica_nodes(ray_host, "sample")), 10)


@pytest.fixture
def small_ray(tmp_path):
    """A Ray host of its own (the tests below kill its nodes and load it): sample and decode, 2 replicas each at
    least, on 2 worker nodes."""
    models = ("sample", "decode")
    host = RayHost(ServerConfig(server="ray", export_store=ARTIFACTS.parent, models=models, log_dir=tmp_path / "logs",
                                kserve=KServeConfig(processes=1),
                                ray=RayConfig(nodes=2, min_replicas=2, max_replicas=3)).with_free_ports())
    with host:
        yield host
    assert not ray_processes(host.tmp), "a Ray process outlived the stop"
    assert not host.tmp.exists()


def test_a_worker_node_killed_under_8_senders_loses_nothing(small_ray):
    assert wait_until(lambda: sorted(replica_nodes(small_ray, "sample")) == ["raylet.1", "raylet.2"], 30)
    clients = Clients(small_ray.url, {"n": 4, "format": "npy"}, 8)  # no seed: the front draws one
    try:
        time.sleep(2)
        killed = kill_node(small_ray, "raylet.1")
        assert killed >= 3  # the raylet, its agents, its replicas
        replaced = ["raylet.2", "raylet.2"]  # both replicas of each route on the surviving node
        assert wait_until(lambda: all(replica_nodes(small_ray, r) == replaced for r in ("sample", "decode")), 90), \
            read_status(small_ray.work_dir / OWNER_STATUS)
        assert wait_until(lambda: running(small_ray, "sample") == running(small_ray, "decode") == 2, 10)
        answered = len(clients.outcomes)
        assert wait_until(lambda: len(clients.outcomes) > answered + 50, 10)
    finally:
        clients.stop()
    assert Counter(outcome[:2] for outcome in clients.outcomes) == {("http", 200): len(clients.outcomes)}
    assert {b for builds in clients.builds for b in builds} == {small_ray.served_manifest("sample").identity}


def test_a_route_scales_up_under_load_and_back_down(small_ray):
    assert running(small_ray, "sample") == 2
    clients = Clients(small_ray.url, {"n": 64, "seed": 1, "format": "npy"}, 8)
    try:
        assert wait_until(lambda: running(small_ray, "sample") == 3, 60), read_status(small_ray.work_dir /
                                                                                      OWNER_STATUS)
        assert metric(small_ray, "fmvae_serving_replicas", 'model="sample",state="running"') == 3
    finally:
        clients.stop()
    assert all(outcome[:2] == ("http", 200) for outcome in clients.outcomes)
    assert wait_until(lambda: running(small_ray, "sample") == 2, 60)
    assert running(small_ray, "decode") == 2  # the idle route never scaled


def test_a_stop_leaves_no_ray_process(small_ray):
    assert len(ray_processes(small_ray.tmp)) >= 10  # head, 2 nodes, controller, 4 replicas
    started = time.monotonic()
    small_ray.stop()
    assert time.monotonic() - started < 20
    assert ray_processes(small_ray.tmp) == []
    assert not members(small_ray.owner.pid) and not members(small_ray.process.pid)
