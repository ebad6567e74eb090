"""The Python client (``client/fmvae_client``): a method for every operation of the OpenAPI document with exactly
its fields; the retry rule, the key-file protocol and request IDs against a scripted stand-in server (sync and
async); every route through the client against each real host; the command line."""

from __future__ import annotations

import asyncio
import base64
import inspect
import io
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from fmvae_client import APIError, AsyncClient, Client, TransportError, retry
from fmvae_client.client import Operations
from PIL import Image

from handlers.schema import PATH_PREFIX
from serving.routes import ROUTES, openapi, route_example
from tests.conftest import QuietHandler, running, send_answer

METHOD_ONLY = {"self", "route", "request_id"}  # a method's parameters that are not request fields


def request_schema(operation: str) -> dict:
    document = openapi()
    schema = document["paths"][PATH_PREFIX + operation]["post"]["requestBody"]["content"]["application/json"]["schema"]
    return document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]


def method_fields(cls: type, operation: str) -> tuple[set[str], set[str]]:
    """(every field, the required ones) of a client method: its parameters, a trailing underscore dropped."""
    parameters = inspect.signature(getattr(cls, operation)).parameters.values()
    fields = {p.name.rstrip("_"): p for p in parameters if p.name not in METHOD_ONLY}
    return set(fields), {name for name, p in fields.items() if p.default is inspect.Parameter.empty}


def coverage_gaps(cls: type) -> list[str]:
    """What the document and the client's methods disagree on (empty when they agree)."""
    operations = {path.removeprefix(PATH_PREFIX) for path in openapi()["paths"]}
    methods = {name for name, _ in inspect.getmembers(cls, inspect.isfunction) if not name.startswith("_")}
    gaps = [f"no method for {op}" for op in sorted(operations - methods)]
    gaps += [f"method {m} has no operation" for m in sorted(methods - operations)]
    for operation in sorted(operations & methods):
        schema = request_schema(operation)
        fields, required = method_fields(cls, operation)
        document = set(schema["properties"])
        gaps += [f"{operation}: field {f} missing" for f in sorted(document - fields)]
        gaps += [f"{operation}: parameter {f} not in the document" for f in sorted(fields - document)]
        if required != set(schema.get("required", [])):
            gaps.append(f"{operation}: required {sorted(required)}, the document {schema.get('required', [])}")
    return gaps


def test_every_operation_of_the_document_has_a_method_with_its_fields():
    assert coverage_gaps(Operations) == []


def test_the_coverage_check_fails_on_a_missing_or_extra_field():
    class Missing(Operations):
        def sample(self, n: int | None = None, *, route: str = "sample", request_id: str | None = None) -> None:
            """Fewer fields than the document."""

        def extra(self) -> None:
            """Not an operation."""

    gaps = coverage_gaps(Missing)
    assert "sample: field seed missing" in gaps and "method extra has no operation" in gaps


class StandIn(ThreadingHTTPServer):
    """Answers each POST with the next entry of ``script`` (then 200 JSON ``{"ok": true}``): a status, "reset"
    (the connection closed without an answer) or "slow" (a 200 after a second). Keeps the headers of every
    request; with ``key`` set, a request with another key gets 401 unauthorized and ``on_refused`` runs."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.script: list = []
        self.requests: list[dict[str, str]] = []
        self.key: str | None = None
        self.on_refused = lambda: None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(QuietHandler):
    server: StandIn
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers["Content-Length"]))
        self.server.requests.append(dict(self.headers))
        if self.server.key and self.headers.get("Authorization") != f"Bearer {self.server.key}":
            self.server.on_refused()
            return self.answer(401, {"code": 401, "reason": "unauthorized", "message": "key", "field": "Authorization"})
        entry = self.server.script.pop(0) if self.server.script else 200
        if entry == "slow":
            time.sleep(1.0)
            entry = 200
        if entry == "reset":
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return None
        if entry == 200:
            return self.answer(200, {"ok": True})
        return self.answer(entry, {"code": entry, "reason": "invalid_value" if entry == 400 else "overloaded",
                                   "message": "scripted", "field": "n" if entry == 400 else "body"})

    def answer(self, status: int, body: dict) -> None:
        send_answer(self, status, "application/json", json.dumps(body).encode(),
                    {"X-Request-ID": self.headers.get("X-Request-ID", "none")})


@pytest.fixture
def stand_in() -> Iterator[StandIn]:
    with running(StandIn()) as server:
        yield server


def test_busy_answers_and_resets_are_retried_under_one_request_id(stand_in):
    stand_in.script = [503, "reset", 507, 200]
    with Client(stand_in.url) as client:
        response = client.call("sample", {"n": 1})
    assert (response.status, response.attempts, response.value()) == (200, 4, {"ok": True})
    ids = {r["X-Request-ID"] for r in stand_in.requests}
    assert len(stand_in.requests) == 4 and ids == {response.request_id} and len(response.request_id) == 32


def test_a_bad_request_is_not_retried_and_raises_the_error_shape(stand_in):
    stand_in.script = [400]
    with Client(stand_in.url) as client, pytest.raises(APIError) as raised:
        client.sample(n=0, request_id="my-call-1")
    error = raised.value
    assert (error.status, error.code, error.reason, error.field, error.request_id) == (
        400, 400, "invalid_value", "n", "my-call-1")
    assert "field n" in str(error) and "my-call-1" in str(error)
    assert len(stand_in.requests) == 1 and stand_in.requests[0]["X-Request-ID"] == "my-call-1"


def test_the_retries_end_after_the_rule_s_attempts(stand_in):
    stand_in.script = [503] * retry.ATTEMPTS
    with Client(stand_in.url) as client, pytest.raises(APIError) as raised:
        client.sample(n=1)
    assert raised.value.status == 503 and len(stand_in.requests) == retry.ATTEMPTS


def test_no_answer_at_all_is_a_transport_error_with_the_request_id():
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with Client(f"http://127.0.0.1:{port}") as client, pytest.raises(TransportError) as raised:
        client.call("sample", {"n": 1}, request_id="lost-1")
    assert raised.value.request_id == "lost-1" and f"{retry.ATTEMPTS} tries" in str(raised.value)


@pytest.mark.parametrize("asynchronous", [False, True])
def test_a_timed_out_answer_is_a_transport_error_and_not_sent_again(stand_in, asynchronous):
    stand_in.script = ["slow"]
    with pytest.raises(TransportError) as raised:
        if asynchronous:
            async def call() -> None:
                async with AsyncClient(stand_in.url, timeout=0.2) as client:
                    await client.call("sample", {"n": 1}, request_id="slow-1")
            asyncio.run(call())
        else:
            with Client(stand_in.url, timeout=0.2) as client:
                client.call("sample", {"n": 1}, request_id="slow-1")
    assert raised.value.request_id == "slow-1" and "ReadTimeout" in str(raised.value)
    assert len(stand_in.requests) == 1


def test_a_refused_key_is_read_again_from_the_key_file(stand_in, tmp_path):
    key_file = tmp_path / "key_file.json"
    key_file.write_text(json.dumps({"inference": {"key": "old"}}))
    stand_in.key = "new"
    stand_in.on_refused = lambda: key_file.write_text(json.dumps({"inference": {"key": "new"}}))  # a renewal
    with Client(stand_in.url, key_file=key_file) as client:
        assert client.sample(n=1) == {"ok": True}
    assert [r["Authorization"] for r in stand_in.requests] == ["Bearer old", "Bearer new"]
    stand_in.key, stand_in.on_refused = "other", lambda: None  # refused, and the file holds no new key
    with Client(stand_in.url, key_file=key_file) as client, pytest.raises(APIError) as raised:
        client.sample(n=1)
    assert raised.value.status == 401 and raised.value.field == "Authorization"


def test_the_async_client_follows_the_same_rule(stand_in):
    stand_in.script = [503, "reset", 200]

    async def run() -> dict:
        async with AsyncClient(stand_in.url) as client:
            return await client.sample(n=2, request_id="async-1")

    assert asyncio.run(run()) == {"ok": True}
    assert [r["X-Request-ID"] for r in stand_in.requests] == ["async-1"] * 3


def test_points_images_and_latents_are_sent_as_the_service_takes_them():
    from fmvae_client.client import image_list, latent_list, point

    pixels = np.linspace(0, 1, 784).reshape(28, 28)
    sent = image_list([pixels])[0]
    back = np.asarray(Image.open(io.BytesIO(base64.b64decode(sent))))
    assert back.shape == (28, 28) and abs(int(back[-1, -1]) - 255) <= 1 and back[0, 0] == 0
    assert point(3) == {"seed": 3} and point("Sneaker") == {"class": "Sneaker"}
    assert point(np.zeros(2)) == {"latent": [0.0, 0.0]} and point({"seed": 1}) == {"seed": 1}
    assert point(pixels[None]) == {"image": sent}  # a (1, 28, 28) array is an image, not a latent
    assert latent_list(np.ones((2, 3))) == [[1.0] * 3] * 2
    with pytest.raises(TypeError):
        point(True)


def keyword_arguments(body: dict) -> dict:
    """A request body as a client method's keyword arguments (``class`` -> ``class_``, ...)."""
    return {(f"{name}_" if name in ("class", "from", "range") else name): value for name, value in body.items()}


@pytest.mark.integration
@pytest.mark.parametrize("host", ["server", "kserve_host"])
def test_every_route_answers_through_the_client_as_a_raw_request_does(request, host):
    from tests.conftest import post

    served = request.getfixturevalue(host)
    with Client(served.url) as client:
        for name, route in ROUTES.items():
            body = route_example(name) | {"format": "npy"}
            value = getattr(client, route.operation)(**keyword_arguments(body), route=name)
            status, _, raw = post(served, name, body)
            assert status == 200 and np.array_equal(value, np.load(io.BytesIO(raw))), name
        assert isinstance(client.sample(n=2, seed=1), Image.Image)  # png by default
        assert client.sample(n=2, seed=1, format="json")["seed"] == 1
        with pytest.raises(APIError) as raised:
            client.sample(n=0)
        assert raised.value.field == "n" and raised.value.reason


@pytest.mark.integration
def test_the_command_line_writes_answers_and_names_refused_fields(kserve_host, tmp_path):
    cli = [sys.executable, "-m", "fmvae_client", "--url", kserve_host.url]
    done = subprocess.run([*cli, "sample", "--n", "4", "--seed", "1", "-o", str(tmp_path / "s.png")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert Image.open(tmp_path / "s.png").size[0] > 28
    refused = subprocess.run([*cli, "sample", "--n", "0"], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "field n" in refused.stderr and "request" in refused.stderr
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((28, 28), 40 * i, np.uint8), mode="L").save(folder / f"{i}.png")
    done = subprocess.run([*cli, "encode-folder", str(folder), "-o", str(tmp_path / "z.npz")], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "3/3" in done.stderr, done.stderr
    encoded = np.load(tmp_path / "z.npz")
    assert list(encoded["names"]) == ["0.png", "1.png", "2.png"] and encoded["mu"].shape[0] == 3
    assert Path(tmp_path / "z.npz").stat().st_size > 0 and not list(tmp_path.glob(".*"))


@pytest.mark.integration
def test_the_readmes_client_example_runs(kserve_host):
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    code = readme.split("### The Python client", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert 'Client("http://127.0.0.1:8080", key_file="/home/fmvae/run/key_file.json")' in code
    code = code.replace('Client("http://127.0.0.1:8080", key_file="/home/fmvae/run/key_file.json")',
                        f'Client("{kserve_host.url}")')  # the test host runs without token auth
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert isinstance(scope["grid"], Image.Image) and np.asarray(scope["z"]).shape == (1, 64)
    assert scope["boots"].shape[-2:] == (28, 28)
