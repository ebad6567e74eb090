"""Operations, second pass: each case of docs/operations.md's fault table that a first day in production hits,
against a real TorchServe: keys that expire, a damaged artifact in a sound archive, the explorer's auth and its
output, the log folder, the drain bound under clients that keep sending, slow clients, the JVM's heap."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest
from fmvae_client import APIError, Client, fetch

from explorer.server import Explorer
from loadtest import soak
from runtime.manifest import FILE as MANIFEST
from serving.errors import ServerError
from serving.health import problems
from serving.routes import ROUTES
from serving.settings import ServerConfig, TorchServeConfig
from serving.torchserve.host import TorchServe, config_properties
from tests.conftest import ARTIFACTS, damaged_export
from tests.launching import NPY, Clients, Launcher, group_alive, wait_until

pytestmark = pytest.mark.integration  # a real TorchServe (Java)

SPACE_2D = tuple(name for name, route in ROUTES.items() if route.export == "export-2d")  # what the explorer needs
DECODE_2D = json.dumps({"latents": [[0.5, -0.5]], "format": "json"}).encode()


def call(url: str, body: bytes, headers: dict) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"}
                                     | headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def serve_in_thread(server: Explorer) -> Explorer:
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def session(page: Explorer, key: str) -> tuple[int, dict]:
    """POST the key to the explorer's session route: (status, the Cookie header its answer sets)."""
    conn = http.client.HTTPConnection("127.0.0.1", page.server_address[1], timeout=30)
    conn.request("POST", "/api/session", json.dumps({"key": key}), {"Content-Type": "application/json"})
    response = conn.getresponse()
    response.read()
    cookie = (response.getheader("Set-Cookie") or "").split(";")[0]
    conn.close()
    return response.status, {"Cookie": cookie}


# 1. Keys: renewed before they expire; clients that read the key for each request never see a 4xx.

def test_keys_are_renewed_before_they_expire_under_load(current_store, tmp_path, capfd):
    config = ServerConfig(torchserve=TorchServeConfig(model_store=current_store, token_expiration_min=0.1),
                          models=("sample", *SPACE_2D), token_auth=True,
                          work_dir=tmp_path / "work").with_free_ports()  # keys live 6 s
    with TorchServe(config) as ts:
        first_key = ts.key("inference")
        page = serve_in_thread(Explorer(ts.url, config.models, ARTIFACTS.parent, key_file=ts.key_file))
        status, cookie = session(page, ts.key("inference"))
        if status == 401:  # renewed since it was read (every 2 s): read it again, as the page's user would
            status, cookie = session(page, ts.key("inference"))
        statuses, health, proxied = [], [], []
        stop = threading.Event()

        def client() -> None:  # the client package: the key from the key file, read again when refused
            with Client(ts.url, key_file=ts.key_file) as user:
                while not stop.is_set():
                    try:
                        statuses.append(user.call("sample", NPY).status)
                    except APIError as e:
                        statuses.append(e.status)

        threads = [threading.Thread(target=client) for _ in range(3)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30  # five key lifetimes
        while time.monotonic() < deadline:
            health.append(problems(ts.probe()))
            proxied.append(call(f"{page.url}/api/predictions/decode2d", DECODE_2D, cookie)[0])
            time.sleep(1)
        stop.set()
        for t in threads:
            t.join()
        page.shutdown()
        assert status == 204 and ts.renewer.renewals >= 8  # renewed every 2 s of the 6 s lifetime
        assert ts.key("inference") != first_key
    assert len(statuses) > 30 and set(statuses) == {200}
    assert all(found == [] for found in health), [found for found in health if found][:3]
    assert set(proxied) == {200}  # the explorer's session outlives the keys it was opened with
    assert "key renewal failed" not in capfd.readouterr().err  # the renewer stops before TorchServe does


NPY_BODY = json.dumps(NPY).encode()


# 2. A damaged artifact inside a sound archive: refused before TorchServe starts, named; a worker's load failure is
# named with the exception its traceback ends with.

def damaged_store(current_store: Path, tmp_path: Path, rehash: bool) -> tuple[Path, str]:
    """A store whose decode archive holds random bytes for its int8 decoder (and, with ``rehash``, a manifest
    that agrees with them)."""
    folder = damaged_export(ARTIFACTS, tmp_path, rehash)
    garbage = (folder / "decoder_int8.onnx").read_bytes()
    store = tmp_path / "store"
    store.mkdir()
    shutil.copy(current_store / "sample.mar", store)
    with zipfile.ZipFile(current_store / "decode.mar") as source, zipfile.ZipFile(store / "decode.mar", "w") as out:
        for item in source.infolist():
            data = source.read(item)
            if item.filename == "decoder_int8.onnx":
                data = garbage
            elif item.filename == MANIFEST and rehash:
                data = (folder / MANIFEST).read_bytes()
            out.writestr(item, data)
    return store, "decode"


def test_a_damaged_artifact_fails_the_start_at_once_naming_archive_and_member(current_store, tmp_path):
    store, model = damaged_store(current_store, tmp_path, rehash=False)
    server = TorchServe(ServerConfig(torchserve=TorchServeConfig(model_store=store),
                                     models=("sample", model)).with_free_ports())
    start = time.monotonic()
    with pytest.raises(ServerError, match=rf"{store / 'decode.mar'}: not a usable model archive \(member "
                                          r"decoder_int8.onnx has SHA-256 .*, its manifest says"):
        server.start()
    assert time.monotonic() - start < 1 and server.process is None and not server.tmp.exists()


def test_a_worker_load_failure_is_named_with_its_real_cause(current_store, tmp_path):
    store, model = damaged_store(current_store, tmp_path, rehash=True)  # passes the hash check: the worker fails
    server = TorchServe(ServerConfig(torchserve=TorchServeConfig(model_store=store), models=(model,),
                                     log_dir=tmp_path / "logs").with_free_ports())
    with pytest.raises(ServerError) as failed:
        server.start()
    message = str(failed.value)
    assert message.startswith(f"model {model}: its workers die while loading: ") and "InvalidProtobuf" in message
    assert "no traceback" not in message and not server.tmp.exists()


# 4. The explorer answers every malformed request, and the launcher reads its output for as long as it runs.

def test_the_explorer_answers_bad_requests_and_its_output_never_fills_up(tmp_path, current_store):
    launched = Launcher(current_store, tmp_path, models=SPACE_2D)
    try:
        launched.wait_ready()
        port = launched.config.explorer_port
        for i in range(100):  # each logged with its 1 KB path: 100 KB, more than a pipe holds
            with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
                conn.sendall(f"POST /api/session?pad={'x' * 1000}{i} HTTP/1.1\r\nHost: a\r\n"
                             "Content-Type: application/json\r\nContent-Length: abc\r\n\r\n".encode())
                answer = b"".join(iter(lambda: conn.recv(65536), b"")).decode()  # it closes the connection
            assert answer.startswith("HTTP/1.1 400") and '"reason": "bad_content_length"' in answer, answer[:300]
        status, body = call(f"http://127.0.0.1:{port}/api/predictions/decode2d", DECODE_2D, {})
        assert status == 200 and len(json.loads(body)["images"]) == 1
        assert (tmp_path / "logs" / "explorer.log").stat().st_size > 100_000
    finally:
        launched.kill()


# 5. An unwritable log folder: one line naming it, in a second.

@pytest.mark.parametrize("folder", ["/sys", "/sys/fmvae-logs"])  # not writable even for root
def test_an_unwritable_log_folder_is_named_at_once(tmp_path, current_store, folder):
    launched = Launcher(current_store, tmp_path, "--log-dir", folder)
    start = time.monotonic()
    assert launched.process.wait(timeout=30) == 1
    assert time.monotonic() - start < 5  # the interpreter's start included
    errors = [line for line in launched.lines if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {folder}: the log folder is not writable")
    assert "Traceback" not in launched.output() and not launched.new_temp_dirs()


# 6. Drain: clients that ignore the 503s lose nothing and no longer hold it to its timeout; nothing is left behind.

@pytest.mark.parametrize(("host", "senders"), [("torchserve", 16), ("torchserve", 16), ("torchserve", 8),
                                               ("torchserve", 8), ("kserve", 16), ("kserve", 8)])
def test_a_stop_under_constant_senders_resets_nothing_and_ends_with_the_accepted_work(launcher, tmp_path, host,
                                                                                       senders):
    """Keep-alive clients that send again at once after every answer, 503s included, until their connection is
    refused: every request that went out is answered (200 or 503 shutting_down), none is reset or cut off, and
    the drain ends on the accepted work, well inside its timeout (several runs of each: a reset is a race, rare in
    one run)."""
    kserve = ("--server", "kserve", "--export-store", str(ARTIFACTS.parent), "--processes", "1")
    launched = launcher(*(kserve if host == "kserve" else ()), "--drain-timeout", "20", "--work-dir",
                        str(tmp_path / "work"))
    group = launched.wait_ready()
    clients = Clients(launched.url, NPY, senders)
    time.sleep(2)
    signalled = time.monotonic()
    launched.process.send_signal(signal.SIGTERM)
    try:
        assert launched.process.wait(timeout=40) == 0, launched.output()
        stopped = time.monotonic() - signalled
        clients.join(timeout=10)  # each ends at its refused connection
    finally:
        clients.stop()
    errors = [o for o in clients.outcomes if o[0] == "error"]
    assert not errors, f"{len(errors)} request(s) reset or cut off: {errors[:3]}\n{launched.output()}"
    kinds = {(kind, status) for kind, status, _ in clients.outcomes}
    assert {("http", 200), ("refused", 0)} <= kinds <= {("http", 200), ("http", 503), ("refused", 0)}, kinds
    assert host == "kserve" or ("http", 503) in kinds  # TorchServe's handlers refuse what they take up draining
    refusals = [json.loads(body) for _, status, body in clients.outcomes if status == 503]
    assert {r["reason"] for r in refusals} <= {"shutting_down"}
    assert "(new connections refused)" in launched.output(), launched.output()
    assert "stopped (drained in" in launched.output(), launched.output()  # not "drain timed out after 20 s"
    assert stopped < 10, launched.output()  # the drain and the processes' stop
    assert not group_alive(group) and not launched.new_temp_dirs()
    assert not (tmp_path / "work" / "draining").exists()


def test_a_second_signal_cuts_a_stuck_drain_short_and_still_cleans_up(launcher, tmp_path):
    """A worker that stops answering (SIGSTOP) leaves requests queued: the drain waits for them until a second
    Ctrl-C."""
    launched = launcher("--drain-timeout", "60")
    group = launched.wait_ready()
    management = f"http://127.0.0.1:{launched.config.torchserve.management_port}"
    workers = [w["pid"] for w in fetch(f"{management}/models/sample")[0]["workers"]]
    os.kill(workers[0], signal.SIGSTOP)
    clients = Clients(launched.url, NPY, 6)
    time.sleep(2)
    launched.process.send_signal(signal.SIGINT)
    time.sleep(2)
    assert launched.process.poll() is None  # still draining: requests wait in the stopped worker's queue
    second = time.monotonic()
    launched.process.send_signal(signal.SIGINT)
    try:
        assert launched.process.wait(timeout=40) == 0, launched.output()
    finally:
        clients.stop()
    assert time.monotonic() - second < 40 and "stopping now" in launched.output()
    assert "Traceback" not in launched.output() and "KeyboardInterrupt" not in launched.output()
    assert not group_alive(group) and not launched.new_temp_dirs()


def test_a_killed_launcher_leaves_no_temp_dir_or_drain_mark(launcher, tmp_path):
    launched = launcher("--work-dir", str(tmp_path / "work"))
    group = launched.wait_ready()
    (tmp_path / "work" / "draining").touch()  # as if it was killed while draining
    os.kill(launched.process.pid, signal.SIGKILL)
    assert wait_until(lambda: not group_alive(group), 20)
    assert wait_until(lambda: not launched.new_temp_dirs() and not (tmp_path / "work" / "draining").exists(), 20)


# 7. Slow clients: the ports this project serves cut a request that trickles in, and an idle connection.

def trickle(port: int, stop: threading.Event, closed: list[float]) -> None:
    """A slowloris client: a header byte every 0.5 s until the server closes the connection (its time noted)."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(b"GET /metrics HTTP/1.1\r\nHost: a\r\n")
        try:
            while not stop.is_set():
                conn.sendall(b"X")
                conn.settimeout(0.5)
                try:
                    if conn.recv(1024) == b"":
                        break
                except TimeoutError:
                    continue
        except OSError:  # reset: closed as well
            pass
    closed.append(time.monotonic() - start)


def test_slow_and_idle_clients_are_cut_off(current_store):
    config = ServerConfig(torchserve=TorchServeConfig(model_store=current_store), models=SPACE_2D, request_timeout=2,
                          idle_timeout=3).with_free_ports()
    with TorchServe(config) as ts:
        page = serve_in_thread(Explorer(ts.url, SPACE_2D, ARTIFACTS.parent, idle_timeout=3, request_timeout=2))
        stop, closed = threading.Event(), []
        threads = [threading.Thread(target=trickle, args=(port, stop, closed))
                   for port in (config.metrics_port, page.server_address[1]) for _ in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=15)
        stop.set()
        assert len(closed) == 20 and max(closed) < 4, closed  # 2 s deadline, however slowly the bytes come
        idle = socket.create_connection(("127.0.0.1", config.metrics_port), timeout=10)
        start = time.monotonic()
        assert idle.recv(1) == b"" and 2.5 < time.monotonic() - start < 6  # idle: closed after 3 s
        idle.close()
        assert urllib.request.urlopen(ts.metrics_url, timeout=10).status == 200  # and it still serves
        assert call(f"{page.url}/api/predictions/decode2d", DECODE_2D, {})[0] == 200
        page.shutdown()


# 8. The JVM: a bounded heap, and the soak reports its memory.

def test_the_soak_reports_the_jvm_under_its_heap_bound(current_store):
    config = ServerConfig(torchserve=TorchServeConfig(model_store=current_store),
                          models=("sample", "interpolate")).with_free_ports()
    assert f"-Xmx{config.torchserve.jvm_heap_mb}m" in config_properties(config, current_store)
    report = soak.run(config, 0.15, 2)  # one short "minute"
    assert report["errors"] == 0 and report["requests"] > 20
    assert 0 < report["jvm_memory_max_mb"] < 4 * config.torchserve.jvm_heap_mb and report["jvm_heap_bound_mb"] == 256
    assert "JVM memory at most" in soak.markdown(report)

