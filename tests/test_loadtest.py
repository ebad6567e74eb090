"""The load test's users as clients of the service: they follow the retry rule (fmvae_client.retry) and send each
route a body of its own model. Driven against a stand-in server whose answers each test scripts; Locust runs in
a subprocess, since importing it monkey-patches the process with gevent."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from types import SimpleNamespace

import numpy as np
import psutil
import pytest
from fmvae_client import retry
from PIL import Image

from handlers.schema import PATH_PREFIX
from loadtest import capacity, soak
from loadtest.__main__ import targets
from loadtest.mix import CONTENT_TYPES
from serving.routes import EXPORT_2D, ROUTES
from serving.settings import ServerConfig
from tests.conftest import QuietHandler, running, send_answer

DIMS = {"sample": 64, "sample2d": 2}  # the stand-in's samplers and their models' latent sizes
PNG = base64.b64encode((lambda b: (Image.new("L", (28, 28)).save(b, "PNG"), b.getvalue())[1])(io.BytesIO())).decode()

DRIVER = """
import json, sys
from locust.env import Environment
import loadtest.locustfile as f
from serving.routes import ROUTES

host, calls = sys.argv[1], json.loads(sys.argv[2])
f.ServiceUser.host = host
env = Environment(user_classes=[f.ServiceUser], host=host)
events = []
env.events.request.add_listener(lambda name, exception, **kw: events.append([name, exception is None]))
user = f.ServiceUser(env)
user.on_start()
for name in calls:
    user.call(name, ROUTES[name])
print(json.dumps(events))
"""


class StandIn(ThreadingHTTPServer):
    """Answers each route with its scripted statuses (or [status, message]) in turn, then 200s: a json sample
    for the samplers, an empty answer in the format's content type otherwise. Keeps every body it was sent."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.script: dict[str, list] = {}
        self.bodies: list[tuple[str, dict]] = []


class Handler(QuietHandler):
    server: StandIn

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        route = self.path.removeprefix(PATH_PREFIX)
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.bodies.append((route, request))
        statuses = self.server.script.get(route, [])
        entry = statuses.pop(0) if statuses else 200
        status, message = entry if isinstance(entry, list) else (entry, "scripted")
        if status == 200 and route in DIMS:
            body = json.dumps({"images": [PNG, PNG], "latents": np.zeros((2, DIMS[route])).tolist()}).encode()
        elif status == 200:
            body = b"{}"
        else:
            body = json.dumps({"code": status, "reason": "scripted", "message": message, "field": None}).encode()
        send_answer(self, status, CONTENT_TYPES[request.get("format", "json")] if status == 200  # its format's type
                    else "application/json", body)


@pytest.fixture
def stand_in() -> Iterator[StandIn]:
    with running(StandIn()) as server:
        yield server


def drive(server: StandIn, *calls: str) -> list[list]:
    """Locust's request events ([name, succeeded]) of one user making ``calls`` against the stand-in."""
    url = f"http://127.0.0.1:{server.server_address[1]}"
    done = subprocess.run([sys.executable, "-c", DRIVER, url, json.dumps(calls)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_busy_answers_are_retried_and_reported_apart_from_the_route(stand_in):
    stand_in.script = {"sample2d": [503, 507], "decode2d": [503, 503]}
    events = drive(stand_in, "decode2d")
    assert events == [["setup (retried)", True], ["setup (retried)", True], ["setup", True],
                      ["decode2d (retried)", True], ["decode2d (retried)", True], ["decode2d", True]]
    sent = [body for route, body in stand_in.bodies if route == "decode2d"]
    assert len(sent) == 3 and all(body == sent[0] for body in sent)  # the same request each time


def test_a_worker_that_died_is_retried_and_a_bad_request_is_not(stand_in):
    stand_in.script = {"decode": [[500, "Worker died."]]}  # TorchServe's words when a worker process died
    assert drive(stand_in, "decode") == [["setup", True], ["decode (retried)", True], ["decode", True]]
    stand_in.script = {"decode": [[500, "internal"]]}
    assert drive(stand_in, "decode") == [["setup", True], ["decode", False]]
    stand_in.script = {"decode": [400]}
    assert drive(stand_in, "decode") == [["setup", True], ["decode", False]]


def test_a_request_still_refused_after_its_retries_is_a_failure(stand_in):
    stand_in.script = {"sample": [503] * retry.ATTEMPTS}
    events = drive(stand_in, "sample")
    assert events == [["setup (retried)", True]] * (retry.ATTEMPTS - 1) + [["setup", False]]
    assert [route for route, _ in stand_in.bodies] == ["sample"] * retry.ATTEMPTS  # no request without a model


def test_every_body_is_of_its_routes_model_even_when_a_setup_failed(stand_in):
    stand_in.script = {"sample2d": [500]}  # the 2-d model's setup fails once, not retried
    drive(stand_in, "decode2d", "decode", "decode2d", *ROUTES)
    sent = {route: [] for route in ROUTES}
    for route, body in stand_in.bodies:
        sent[route].append(body)
    assert sent["decode2d"] and all(len(b["latents"][0]) == DIMS["sample2d"] for b in sent["decode2d"])
    assert sent["decode"] and all(len(b["latents"][0]) == DIMS["sample"] for b in sent["decode"])
    for route, bodies in sent.items():  # latents anywhere in a body are of the route's model
        dim = DIMS["sample2d" if ROUTES[route].export == EXPORT_2D else "sample"]
        for body in bodies:
            for latent in latents(body):
                assert len(latent) == dim, (route, body)


def latents(value: object) -> Iterator[list]:
    """Every latent vector in a request body (a list of numbers under a "latent" or in "latents")."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "latent":
                yield item
            elif key == "latents":
                yield from item
            else:
                yield from latents(item)
    elif isinstance(value, list):
        for item in value:
            yield from latents(item)


def test_the_backoff_grows_honours_retry_after_and_is_jittered():
    first = [retry.backoff(0) for _ in range(200)]
    assert min(first) >= retry.BASE_S and max(first) <= 1.5 * retry.BASE_S and len(set(first)) > 100
    assert min(retry.backoff(3) for _ in range(50)) >= 8 * retry.BASE_S
    assert min(retry.backoff(0, "1") for _ in range(50)) >= 1.0
    assert max(retry.backoff(20, "100") for _ in range(50)) == retry.CAP_S
    assert retry.retryable(500, b'{"message": "Worker died."}') and not retry.retryable(500, b"{}")


def test_capacity_climbs_until_the_gate_breaks_and_measures_each_round(stand_in, monkeypatch, tmp_path):
    """Rounds of real Locust runs against the stand-in, which starts refusing every request after the first
    round: the climb stops at the broken round, the host holds the first round's users, and each round has its
    throughput, latency, CPU (the server's and Locust's own) and memory; the report is written whole."""
    monkeypatch.setenv("LOADTEST_MIX", "sample=1")
    monkeypatch.setenv("LOADTEST_WAIT", "0.05,0.1")
    served = capacity.Served(f"http://127.0.0.1:{stand_in.server_address[1]}", lambda: [psutil.Process()])
    args = capacity.parser().parse_args(["--start", "2", "--step", "3", "--max", "20", "--spawn-rate", "10",
                                         "--duration", "4"])

    def after_a_round(line: str) -> None:
        stand_in.script = {"sample": [400] * 100_000}

    rounds = capacity.climb(served, args, targets([], 80.0), tmp_path / "rounds", after_a_round)
    assert [(r["users"], r["passed"]) for r in rounds] == [(2, True), (5, False)]
    assert capacity.held(rounds) == 2
    first, broken = rounds
    assert first["failures"] == 0 and first["requests_per_s"] > 5 and 0 < first["p50_ms"]["sample"] < 80
    assert broken["failures"] > 0
    assert first["locust_cpu_cores"] > 0.01 and first["server_cpu_cores"] > 0 and first["server_memory_mb"] > 10
    report = {"date": "2026-12-05", "machine": "test", "p50_gate_ms": 80.0, "hosts": {"stand-in": {
        "held": capacity.held(rounds), "rounds": rounds}}}
    capacity.write(report, tmp_path / "report")
    table = (tmp_path / "report" / "capacity.md").read_text()
    assert "| stand-in | 2 | held |" in table and "| stand-in | 5 | broken |" in table
    assert "| stand-in | 2 |" in table.split("users held")[1]
    assert json.loads((tmp_path / "report" / "capacity.json").read_text())["hosts"]["stand-in"]["held"] == 2
    assert (tmp_path / "report" / "capacity.png").read_bytes()[:4] == b"\x89PNG"
    assert not list((tmp_path / "report").glob("*.tmp*"))


def gone(pid: int) -> bool:
    """Whether process ``pid`` has exited (a zombie has too)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_capacity_kills_locust_and_its_children_when_measuring_raises(monkeypatch, tmp_path):
    """measure() raising (here: listing the server's processes) leaves neither Locust nor a child of it running."""
    locust = ("import os, subprocess, sys, time\n"
              "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
              "print(os.getpid(), child.pid, file=sys.stderr, flush=True)\n"
              "time.sleep(60)")
    monkeypatch.setattr(capacity, "locust_command", lambda *args: [sys.executable, "-c", locust])
    log, pids = tmp_path / "round" / "locust.log", []

    def processes() -> list[psutil.Process]:
        deadline = time.monotonic() + 30
        while not log.read_text().strip() and time.monotonic() < deadline:  # Locust and its child started
            time.sleep(0.05)
        pids.extend(int(pid) for pid in log.read_text().split())
        raise RuntimeError("the server's processes cannot be listed")

    args = SimpleNamespace(spawn_rate=1.0, duration=1.0)
    try:
        with pytest.raises(RuntimeError, match="cannot be listed"):
            capacity.round_of(capacity.Served("http://127.0.0.1:9", processes), 1, args, {}, tmp_path / "round")
        assert len(pids) == 2
        deadline = time.monotonic() + 10
        while not all(gone(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [pid for pid in pids if not gone(pid)] == []
    finally:
        for pid in pids:
            if not gone(pid):
                psutil.Process(pid).kill()


def test_soak_stops_its_clients_when_a_measurement_raises(monkeypatch, tmp_path):
    """A per-minute measurement that raises still stops and joins the client threads, which used to run forever."""
    sent, halt = [], threading.Event()  # halt: ends clients that run() left running

    class Host:
        url, metrics_url, log_dir = "http://127.0.0.1:9", "http://127.0.0.1:9/metrics", tmp_path

        def __init__(self, config: ServerConfig) -> None:
            pass

        def __enter__(self) -> Host:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

    class User(Host):
        def __init__(self, url: str, attempts: int) -> None:
            pass

        def send(self, model: str, body: bytes) -> SimpleNamespace:
            if halt.is_set():
                raise SystemExit  # ends the thread quietly
            sent.append(model)
            time.sleep(0.01)
            return SimpleNamespace(status=200)

    def scrape_fails(url: str) -> float:
        raise RuntimeError("the metrics endpoint is gone")

    monkeypatch.setattr(soak, "host_class", lambda kind: Host)
    monkeypatch.setattr(soak, "Client", User)
    monkeypatch.setattr(soak, "worker_memory", scrape_fails)
    before = set(threading.enumerate())
    try:
        with pytest.raises(RuntimeError, match="metrics endpoint is gone"):
            soak.run(ServerConfig(server="torchserve"), minutes=0.002, clients=3)  # the first reading after 0.12 s
        assert sent and set(threading.enumerate()) - before == set()  # the clients ran, and none is left
    finally:
        halt.set()
        for thread in set(threading.enumerate()) - before:
            thread.join(5)
