"""Operations under faults, against a real TorchServe: damaged archives and a model whose workers cannot load,
a port conflict, a killed worker, an overload burst, a killed launcher, a signal under load (and twice), and
the log directory under load. Every test bounds its time and leaves no process or temp dir behind."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from fmvae_client import fetch
from prometheus_client.parser import text_string_to_metric_families

from serving.errors import ServerError
from serving.settings import MIN_QUEUE_REQUESTS, MODELS, ServerConfig, TorchServeConfig
from serving.torchserve import archive
from serving.torchserve.host import TorchServe
from tests.conftest import ARTIFACTS
from tests.launching import FAULT_MODELS, NPY, Clients, group_alive, wait_until

pytestmark = pytest.mark.integration  # a real TorchServe (Java) or Prometheus



def post(url: str, body: dict, timeout: float = 60) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def copy_store(current_store: Path, tmp_path: Path) -> Path:
    store = tmp_path / "store"
    store.mkdir()
    for name in FAULT_MODELS:
        shutil.copy(current_store / f"{name}.mar", store)
    return store


# 1. A damaged store fails the start within seconds, naming the archive and the reason.

@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_a_damaged_archive_fails_the_start_at_once(current_store, tmp_path, damage):
    store = copy_store(current_store, tmp_path)
    mar = store / "sample.mar"
    mar.write_bytes(mar.read_bytes()[: mar.stat().st_size // 2] if damage == "truncated" else b"")
    server = TorchServe(ServerConfig(torchserve=TorchServeConfig(model_store=store),
                                     models=FAULT_MODELS).with_free_ports())
    start = time.monotonic()
    usable = rf"{mar}: not a usable model archive \(.+\); rebuild it with `make archives`"
    with pytest.raises(ServerError, match=usable):
        server.start()
    assert time.monotonic() - start < 5 and not server.tmp.exists()


def test_the_launcher_reports_a_damaged_archive_in_one_line(launcher, current_store, tmp_path):
    store = copy_store(current_store, tmp_path)
    (store / "interpolate.mar").write_bytes(b"PK\x03\x04 not really a zip")
    launched = launcher(store=store)
    assert launched.process.wait(timeout=30) == 1
    error = [line for line in launched.lines if line.startswith("error:")]
    assert error == [f"error: {store / 'interpolate.mar'}: not a usable model archive (not a zip file: File is not "
                     "a zip file); rebuild it with `make archives`\n"], launched.output()
    assert "Traceback" not in launched.output() and not launched.new_temp_dirs()


def test_a_model_whose_workers_die_while_loading_fails_the_start_with_their_reason(tmp_path):
    """A model config that names no decoder: the worker raises ConfigError at start, TorchServe retries it; the
    launcher stops at the first failure with the worker's own exception instead of waiting 180 s."""
    store = tmp_path / "store"
    store.mkdir()
    archive.build("broken", replace(MODELS["sample"], workers=1, decoder={}), ARTIFACTS, store)
    server = TorchServe(ServerConfig(torchserve=TorchServeConfig(model_store=store), models=("broken",),
                                     log_dir=tmp_path / "logs")
                        .with_free_ports())
    start = time.monotonic()
    with pytest.raises(ServerError) as failed:
        server.start()
    assert time.monotonic() - start < 60
    assert str(failed.value).startswith("model broken: its workers die while loading: handlers.errors.ConfigError: "
                                        "model broken: its worker config names no decoder for cpu workers")
    assert not server.tmp.exists() and not group_alive(server.process.pid)


# 6 (launcher). A busy port is one clear line naming it; nothing is left behind.

def test_a_port_conflict_names_the_port(launcher, current_store):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = TorchServe(replace(ServerConfig(torchserve=TorchServeConfig(model_store=current_store),
                                                 models=FAULT_MODELS).with_free_ports(),
                                    metrics_port=port))
        with pytest.raises(ServerError, match=rf"^port {port} \(handler metrics, on 127.0.0.1\) is in use"):
            server.start()
        assert server.process is None and not server.tmp.exists()
        launched = launcher("--inference-port", str(port))
        assert launched.process.wait(timeout=30) == 1
        errors = [line for line in launched.lines if line.startswith("error:")]
        assert len(errors) == 1 and errors[0].startswith(f"error: port {port} (inference, on 127.0.0.1) is in use")
        assert "Traceback" not in launched.output()


# 2, 5, 6 (metrics), health: one running server.

@pytest.fixture(scope="module")
def server(current_store, tmp_path_factory):
    config = ServerConfig(torchserve=TorchServeConfig(model_store=current_store), models=FAULT_MODELS,
                          log_dir=tmp_path_factory.mktemp("fault-logs")).with_free_ports()
    with TorchServe(config) as ts:
        yield ts


def health(server: TorchServe) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "serving.health", "--url", server.url, "--management-url",
                           server.management_url, "--work-dir", str(server.work_dir), "--models", *FAULT_MODELS],
                          capture_output=True, text=True, timeout=30)


def workers(server: TorchServe, model: str) -> list[dict]:
    return fetch(f"{server.management_url}/models/{model}")[0]["workers"]


def scale(server: TorchServe, model: str, count: int) -> None:
    request = urllib.request.Request(f"{server.management_url}/models/{model}?min_worker={count}&max_worker={count}"
                                     "&synchronous=true", method="PUT")
    urllib.request.urlopen(request, timeout=60).read()


def test_health_and_requests_while_a_model_has_no_worker(server):
    assert health(server).returncode == 0
    scale(server, "interpolate", 0)
    try:
        result = health(server)
        assert result.returncode == 1 and "interpolate: no READY worker" in result.stdout
        start = time.monotonic()
        code, body = post(f"{server.url}/predictions/interpolate", {"seeds": [1, 2]})
        assert code == 503 and time.monotonic() - start < 2  # a prompt refusal, not a hang
        assert json.loads(body)["type"] == "ServiceUnavailableException"
    finally:
        scale(server, "interpolate", 1)
    assert wait_until(lambda: health(server).returncode == 0, 30)


def test_killed_workers_cost_their_requests_a_worker_died_error_and_are_replaced(server):
    """Both sample workers killed under load: the requests they held get TorchServe's "Worker died." (507 when
    the worker's exit code is already known as a SIGKILL, else 500), the rest wait for the new workers; no client
    sees a reset or a hang."""
    before = {w["pid"] for w in workers(server, "sample")}
    clients = Clients(server.url, {"n": 64, "seed": 3, "format": "png"}, 8)  # both workers always busy
    time.sleep(1.5)
    for pid in before:
        os.kill(pid, signal.SIGKILL)
    time.sleep(1.5)
    assert wait_until(lambda: sum(w["status"] == "READY" for w in workers(server, "sample")) == 2, 30)
    clients.stop()
    statuses = {(kind, status) for kind, status, _ in clients.outcomes}
    assert statuses <= {("http", 200), ("http", 500), ("http", 507)}, statuses
    died = [(status, json.loads(body)) for _, status, body in clients.outcomes if status != 200]
    assert died, "no request was in a killed worker"
    assert all(body == {"code": status, "type": "InternalServerException", "message": "Worker died."}
               for status, body in died)
    assert not {w["pid"] for w in workers(server, "sample")} & before
    assert post(f"{server.url}/predictions/sample", NPY)[0] == 200 and health(server).returncode == 0


def frontend_only(server: TorchServe, model: str) -> float:
    """Requests TorchServe received for ``model`` minus those its handlers answered: what the frontend answered
    itself (503 queue full, 507 worker died). The rules' client-error ratio is built on the same difference."""
    text = urllib.request.urlopen(server.torchserve_metrics_url).read().decode()
    received = sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
                   if s.name == "ts_inference_requests_total" and s.labels.get("model_name") == model)
    text = urllib.request.urlopen(server.metrics_url).read().decode()
    answered = sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
                   if s.name == "fmvae_requests_total" and s.labels.get("model") == model)
    return received - answered


def test_an_overload_burst_gets_prompt_503s_and_the_metrics_count_them(server):
    time.sleep(0.2)  # the workers write their metrics within 50 ms of replying
    before = frontend_only(server, "sample")
    burst = 200
    start = time.monotonic()
    with ThreadPoolExecutor(burst) as pool:
        results = list(pool.map(lambda _: post(f"{server.url}/predictions/sample", {"n": 64, "format": "npy"}),
                                range(burst)))
    assert time.monotonic() - start < 60
    codes = [code for code, _ in results]
    refused = [json.loads(body) for code, body in results if code == 503]
    assert set(codes) <= {200, 503} and refused and codes.count(200) >= MODELS["sample"].job_queue_size
    assert {(r["code"], r["type"]) for r in refused} == {(503, "ServiceUnavailableException")}
    assert post(f"{server.url}/predictions/sample", NPY)[0] == 200  # recovered at once
    assert wait_until(lambda: frontend_only(server, "sample") - before == len(refused), 5)


def test_an_accepted_request_waits_for_the_work_queued_not_for_a_count_of_requests(current_store):
    """traverse's default request decodes 72 images: its queue holds 16 of them (the floor of MIN_QUEUE_REQUESTS,
    serving/settings.py) and a batch one, so under a burst a request that gets in waits about 17 request times, not
    the 40 of four batches of 8; 16 clients that send at once are all served."""
    spec = MODELS["traverse"]
    with TorchServe(ServerConfig(torchserve=TorchServeConfig(model_store=current_store),
                                 models=("traverse",)).with_free_ports()) as ts:
        url, body = f"{ts.url}/predictions/traverse", {"start": {"seed": 3}, "format": "npy"}
        alone, results = burst(url, body, 40)
        _, together = burst(url, body, MIN_QUEUE_REQUESTS)
    waits = sorted(t for code, t in results if code == 200)
    assert {code for code, _ in results} == {200, 503} and len(waits) >= spec.job_queue_size
    # The docs' bound (docs/serving.md): the queued requests and the one being answered.
    work = spec.job_queue_size // spec.workers + 1
    assert waits[-1] < 2 * work * alone, (waits[-1], alone, work)
    assert {code for code, _ in together} == {200}


def burst(url: str, body: dict, clients: int) -> tuple[float, list[tuple[int, float]]]:
    """The median time of one request alone, then (status, seconds) of ``clients`` sent at once."""

    def timed(_: object = None) -> tuple[int, float]:
        start = time.monotonic()
        code, _ = post(url, body)
        return code, time.monotonic() - start

    alone = sorted(timed()[1] for _ in range(7))[3]  # nothing else queued
    with ThreadPoolExecutor(clients) as pool:
        return alone, list(pool.map(timed, range(clients)))


def test_logs_of_a_busy_server_stay_under_their_cap(current_store, tmp_path):
    """Access log on and 64 KiB caps with one old copy each: under load every file rolls over and the folder stays
    under (files x 2 x cap); with the defaults (access log off) nothing is written per request."""
    cap = 64 * 1024
    logs = tmp_path / "logs"
    config = ServerConfig(torchserve=TorchServeConfig(model_store=current_store), models=("sample",), log_dir=logs,
                          log_max_mb=cap / 2**20,
                          log_backups=1, access_log=True).with_free_ports()
    with TorchServe(config) as ts:
        clients = Clients(ts.url, NPY, 4)
        assert wait_until(lambda: (logs / "access_log.1.log").exists(), 60)
        # enough requests to roll the access log over twice (~85 bytes a line), however busy the machine is
        assert wait_until(lambda: len(clients.outcomes) > 2 * cap / 80, 60)
        clients.stop()
    files = sorted(p.name for p in logs.iterdir())
    assert {"access_log.log", "access_log.1.log", "ts_log.log", "model_log.log", "torchserve.out"} <= set(files)
    assert not [name for name in files if ".2." in name or name.endswith(".2")], files  # one old copy each
    total = sum(p.stat().st_size for p in logs.iterdir())
    assert total <= 4 * 2 * (cap + 4096), (total, files)  # 4 files, a line of slack each

    quiet = tmp_path / "quiet"
    with TorchServe(replace(config, log_dir=quiet, access_log=False).with_free_ports()) as ts:
        time.sleep(1)
        sizes = {p.name: p.stat().st_size for p in quiet.iterdir()}
        clients = Clients(ts.url, NPY, 4)
        time.sleep(3)
        clients.stop()
        time.sleep(0.5)
        assert len(clients.outcomes) > 100 and {p.name: p.stat().st_size for p in quiet.iterdir()} == sizes


# 4. The launcher: TorchServe never outlives it; a stop drains.

def test_a_killed_launcher_takes_its_torchserve_with_it(launcher):
    first = launcher()
    group = first.wait_ready()
    assert post(f"{first.url}/predictions/sample", NPY)[0] == 200
    os.kill(first.process.pid, signal.SIGKILL)
    assert wait_until(lambda: not group_alive(group), 20), "TorchServe outlived its launcher"
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{first.url}/ping", timeout=5)
    second = launcher(config=first.config)
    second_group = second.wait_ready()  # the same ports: a new server, ready because its own workers are
    assert second_group != group and post(f"{second.url}/predictions/sample", NPY)[0] == 200
    second.process.send_signal(signal.SIGTERM)
    assert second.process.wait(timeout=60) == 0 and not group_alive(second_group)


def test_sigterm_under_load_answers_everything_accepted(launcher):
    """Clients that stop at a 503 (as the API asks) see no reset and no request without an answer."""
    launched = launcher("--drain-timeout", "20")
    group = launched.wait_ready()
    clients = Clients(launched.url, NPY, 8, stop_on=(503,))
    time.sleep(2)
    signalled = time.monotonic()
    launched.process.send_signal(signal.SIGTERM)
    assert launched.process.wait(timeout=40) == 0, launched.output()
    stopped = time.monotonic() - signalled
    clients.stop()
    outcomes = clients.outcomes
    kinds = {(kind, status) for kind, status, _ in outcomes}
    assert kinds <= {("http", 200), ("http", 503), ("refused", 0)}, [o for o in outcomes if o[0] == "error"][:3]
    refusals = [json.loads(body) for _, status, body in outcomes if status == 503]
    assert refusals and {r["reason"] for r in refusals} == {"shutting_down"}
    assert all(np.load(io.BytesIO(body)).shape == (4, 28, 28) for _, status, body in outcomes if status == 200)
    assert stopped < 20 and "stopped" in launched.output()
    assert not group_alive(group) and not launched.new_temp_dirs()
