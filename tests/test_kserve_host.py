"""The KServe host against the TorchServe host and on its own: the same bytes for every OpenAPI example in every
format, KServe's own endpoints, and the operations a user of either host gets: a drain that resets nothing, a
damaged artifact or a busy port named at start, token auth, bounded queues, the health check. (Every test that
takes ``api`` also runs through this host: tests/conftest.py.)"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import psutil
import pytest

from handlers.service import MODEL_HEADER
from serving.keys import read_keys
from serving.oip import GRPC_PORT_ENV
from serving.routes import ROUTES, example
from serving.settings import MODELS
from tests.conftest import ARTIFACTS, free_port, post
from tests.launching import FAULT_MODELS, NPY, Clients, Launcher, exchange, wait_until

pytestmark = pytest.mark.integration  # a real TorchServe and a real KServe host
KSERVE = ("--server", "kserve", "--export-store", str(ARTIFACTS.parent), "--processes", "1")
FORMATS = {"sample": ("png", "json", "npy"), "interpolate": ("png", "json", "npy", "gif"), "encode": ("json", "npy"),
           "decode": ("png", "json", "npy"), "reconstruct": ("png", "json", "npy"), "traverse": ("png", "json", "npy"),
           "edit": ("png", "json", "npy"), "analogy": ("png", "json", "npy"), "walk": ("png", "json", "npy", "gif")}


def get(url: str, headers: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


@pytest.mark.parametrize("route", sorted(name for name, r in ROUTES.items() if r.export == "export"))
def test_both_hosts_answer_every_example_in_every_format_with_the_same_bytes(server, kserve_host, route):
    operation = ROUTES[route].operation
    for fmt in FORMATS[operation]:
        body = example(operation) | {"format": fmt}
        ts, ks = post(server, route, body), post(kserve_host, route, body)
        assert (ts[0], ks[0]) == (200, 200), (fmt, ts[2][:200], ks[2][:200])
        assert ts[2] == ks[2], (route, fmt)
        assert ts[1]["content-type"] == ks[1]["content-type"]
        assert ts[1][MODEL_HEADER.lower()] == ks[1][MODEL_HEADER.lower()]
        assert ts[1].get("x-seed") == ks[1].get("x-seed")


def test_kserves_own_endpoints_answer_for_every_route(kserve_host):
    url = kserve_host.url
    assert get(f"{url}/v2/health/live") == (200, {"live": True})
    for route in MODELS:
        assert get(f"{url}/v2/models/{route}/ready")[1] == {"name": route, "ready": True}
        assert get(f"{url}/v1/models/{route}")[1] == {"name": route, "ready": True}
        assert get(f"{url}/v2/models/{route}")[1]["name"] == route
    body = {"latents": [[0.5, -0.5]]}
    request = urllib.request.Request(f"{url}/v1/models/decode2d:predict", method="POST",
                                     data=json.dumps({"instances": [body]}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        (prediction,) = json.loads(response.read())["predictions"]
    direct = json.loads(post(kserve_host, "decode2d", body | {"format": "json"})[2])
    assert prediction == direct
    status, error = post(kserve_host, "nope", {})[0], json.loads(post(kserve_host, "nope", {})[2])
    assert status == 404 and error["reason"] == "unknown_route" and error["field"] == "route"


def v1_predict(url: str, data: bytes, content_type: str = "application/json") -> tuple[int, dict]:
    request = urllib.request.Request(f"{url}/v1/models/decode2d:predict", data=data, method="POST",
                                     headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_kserves_v1_predict_refuses_as_the_api_does(kserve_host):
    """The body limit, strict JSON and the one error shape hold on KServe's own predict verb too."""
    url, good = kserve_host.url, {"latents": [[0.5, -0.5]]}
    limit = kserve_host.config.max_request_size
    cases = [
        (json.dumps({"instances": [good], "pad": "x" * limit}).encode(), 413, "body_too_large", "body"),
        (b'{"instances": [], "instances": []}', 400, "duplicate_key", "instances"),
        (b"[" * 100_000, 400, "malformed_json", "body"),
        (json.dumps({"instances": [good, {"latents": "x"}]}).encode(), 400, "wrong_type", "instances[1].latents"),
        (json.dumps({"inputs": [good]}).encode(), 400, "missing_field", "instances"),
    ]
    for data, status, reason, field in cases:
        for content_type in ("application/json", "text/plain"):
            code, error = v1_predict(url, data, content_type)
            assert (code, error.get("reason"), error.get("field")) == (status, reason, field), (data[:60], error)
            assert set(error) == {"code", "reason", "message", "field"}
    assert v1_predict(url, json.dumps({"instances": [good, good]}).encode())[0] == 200


def test_a_killed_serving_process_is_replaced_while_the_others_answer(launcher, tmp_path):
    """kill -9 of one of two serving processes under 8 clients: only requests on its own connections can fail, the
    other process answers throughout, the supervisor starts a replacement (back within 10 s), the launcher stays."""
    work = tmp_path / "work"
    launched = launcher(*KSERVE[:-1], "2", "--work-dir", str(work))
    launched.wait_ready()
    clients = Clients(launched.url, NPY, 8)
    try:
        time.sleep(2)
        (victim,) = [p for p in psutil.process_iter(["name"]) if p.info["name"] == "kserve-proc-0"
                     and p.ppid() == launched.leader.pid]
        answered = len(clients.outcomes)
        victim.kill()
        log = tmp_path / "logs" / "kserve.out"
        assert wait_until(lambda: "process 0 is back" in log.read_text(), 20), log.read_text()[-3000:]
        time.sleep(1)
        after = len(clients.outcomes)
        time.sleep(1)
        assert len(clients.outcomes) > after  # still answering once it is back
    finally:
        clients.stop()
    outcomes = clients.outcomes[answered:]
    failed = [o for o in outcomes if o[:2] != ("http", 200)]
    assert len(failed) <= 8 and all(kind == "error" for kind, _, _ in failed), failed  # its connections' requests
    back = float(re.search(r"process 0 is back \(pid \d+\), ([\d.]+) s after it went", log.read_text()).group(1))
    assert back < 10 and launched.process.poll() is None
    for model in FAULT_MODELS:
        assert post(launched, model, example(ROUTES[model].operation) | {"format": "npy"})[0] == 200
    assert "process 0 (pid" in log.read_text() and "killed by SIGKILL" in log.read_text()


def test_a_malformed_request_gets_the_one_error_shape(kserve_host):
    """What uvicorn and FastAPI would answer themselves (a request that does not parse, a wrong method, no such
    path) is a 4xx in the one shape; a body over the limit is read to its end so that the client gets the 413."""
    port, body = kserve_host.config.inference_port, json.dumps(NPY).encode()
    head = b"POST /predictions/sample HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    cases = [
        (head + b"Content-Length: abc\r\n\r\n" + body, b"", 400, "malformed_request", "body"),
        (head + b"Transfer-Encoding: chunked\r\n\r\nZZZ\r\n" + body + b"\r\n0\r\n\r\n", b"", 400,
         "malformed_request", "body"),
        (b"GET /predictions/sample HTTP/1.1\r\nHost: x\r\n\r\n", b"", 405, "method_not_allowed", "method"),
        (b"PUT /predictions/sample HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}", b"", 405,
         "method_not_allowed", "method"),
        (b"GET /no/such/path HTTP/1.1\r\nHost: x\r\n\r\n", b"", 404, "not_found", "path"),
        (b"POST /v1/models/sample HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", b"", 405,
         "method_not_allowed", "method"),
    ]
    for size in (5 * 2**20, 50 * 2**20):  # over the 1 MiB limit: answered once the whole body has been read
        cases.append((head + b"Content-Length: %d\r\n\r\n" % size, b"x" * size, 413, "body_too_large", "body"))
    for request, then, status, reason, field in cases:
        code, headers, answer = exchange(port, request, then)
        error = json.loads(answer)
        assert (code, error["reason"], error["field"], error["code"]) == (status, reason, field, status), error
        assert headers["content-type"] == "application/json" and set(error) == {"code", "reason", "message", "field"}
        assert headers["x-request-id"]
        if status == 405 and b"/predictions/" in request:
            assert headers["allow"] == "POST"


def test_a_request_followed_by_a_half_close_is_answered(kserve_host):
    body = json.dumps(NPY).encode()
    request = (b"POST /predictions/sample HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n" % len(body) + body)
    code, headers, answer = exchange(kserve_host.config.inference_port, request, half_close=True)
    assert code == 200 and answer.startswith(b"\x93NUMPY") and headers["x-request-id"]


def test_a_damaged_artifact_stops_the_start_at_once_naming_it(tmp_path, current_store):
    store = tmp_path / "store"
    shutil.copytree(ARTIFACTS.parent / "export", store / "export")
    damaged = store / "export" / "decoder_int8.onnx"
    damaged.write_bytes(damaged.read_bytes()[:-100])
    launched = Launcher(current_store, tmp_path, "--server", "kserve", "--export-store", str(store))
    start = time.monotonic()
    assert launched.process.wait(timeout=30) == 1
    assert time.monotonic() - start < 10
    (error,) = [line for line in launched.lines if line.startswith("error:")]
    assert str(damaged) in error and "damaged" in error and "Traceback" not in launched.output()


def test_a_busy_port_is_named(tmp_path, current_store):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        launched = Launcher(current_store, tmp_path, *KSERVE, "--inference-port", str(port))
        assert launched.process.wait(timeout=30) == 1
    assert f"error: port {port} (inference, on 127.0.0.1) is in use" in launched.output()


def test_token_auth_and_the_health_check(launcher, tmp_path, monkeypatch):
    """Token auth on every path and protocol (the v2 paths refuse in the protocol's shape, its gRPC service with
    UNAUTHENTICATED), and the health check with the key."""
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

    work, grpc_port = tmp_path / "work", free_port()
    monkeypatch.setenv(GRPC_PORT_ENV, str(grpc_port))
    launched = launcher(*KSERVE, "--token-auth", "--work-dir", str(work))
    launched.wait_ready()
    url = f"{launched.url}/predictions/sample"
    assert post_raw(url, NPY, {})[0] == 401
    assert json.loads(post_raw(url, NPY, {"Authorization": "Bearer wrong"})[1])["reason"] == "unauthorized"
    key = read_keys(work / "key_file.json")["inference"]
    assert post_raw(url, NPY, {"Authorization": f"Bearer {key}"})[0] == 200
    assert get(f"{launched.url}/v2/health/live")[0] == 401
    infer, body = f"{launched.url}/v2/models/sample/infer", {"inputs": [], "parameters": {"n": 1, "seed": 1}}
    code, answer = post_raw(infer, body, {})
    assert code == 401 and json.loads(answer) == {"error": "send 'Authorization: Bearer <inference key>'"}
    assert post_raw(infer, body, {"Authorization": f"Bearer {key}"})[0] == 200
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub, request = pb_grpc.GRPCInferenceServiceStub(channel), pb.ModelInferRequest(model_name="sample")
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(request, metadata=[("authorization", "Bearer wrong")], timeout=30)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        answer = stub.ModelInfer(request, metadata=[("authorization", f"Bearer {key}")], timeout=30)
        assert [output.name for output in answer.outputs] == ["images", "latents"]
    health = [sys.executable, "-m", "serving.health", "--server", "kserve", "--url", launched.url, "--work-dir",
              str(work), "--models", *FAULT_MODELS]
    result = subprocess.run(health, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("healthy"), result.stdout + result.stderr
    (work / "draining").touch()
    result = subprocess.run(health, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "draining" in result.stdout


def post_raw(url: str, body: dict, headers: dict) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"} | headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_an_overload_burst_gets_prompt_503s_with_retry_after(kserve_host):
    spec = MODELS["traverse"]
    url, body = f"{kserve_host.url}/predictions/traverse", {"start": {"seed": 3}, "format": "npy"}
    with ThreadPoolExecutor(40) as pool:
        results = list(pool.map(lambda _: post_raw(url, body, {}), range(40)))
    codes = [code for code, _ in results]
    refused = [json.loads(b) for code, b in results if code == 503]
    assert set(codes) == {200, 503} and codes.count(200) >= spec.job_queue_size
    assert {(r["code"], r["reason"]) for r in refused} == {(503, "overloaded")}
    assert post_raw(url, body, {})[0] == 200  # recovered at once
    assert wait_until(lambda: counted(kserve_host, "fmvae_errors_total", reason="overloaded") == len(refused), 5)
    start = (kserve_host.log_dir / "kserve-start.out").read_text()  # the start's lines, kept apart from the rest
    assert "ready, " in start and "overloaded" not in start


def counted(host, name: str, **labels: str) -> float:  # noqa: ANN001
    """The sum of a metric's samples on the handlers' metrics port, over those with ``labels``."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(host.metrics_url, timeout=30).read().decode()
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == name and labels.items() <= sample.labels.items())
