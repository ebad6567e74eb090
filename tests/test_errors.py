"""One error shape (``runtime/errors.py``): the API's errors, the explorer proxy's and the documented Error schema
have the same keys, and every error class of the project derives from one base."""

from __future__ import annotations

import ast
import http.client
import json
import socket
import threading
from pathlib import Path

import pytest
from fmvae_client import ClientError

from explorer.server import Explorer
from handlers.schema import SPEC
from runtime.errors import FmvaeError, error_body
from serving.inprocess import InProcessWorker
from serving.settings import MODELS
from tests.conftest import ARTIFACTS

ROOT = Path(__file__).resolve().parent.parent
KEYS = {"code", "reason", "message", "field"}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def explorer(current_store):
    """The explorer in front of an inference API that is not there (its own errors need none)."""
    server = Explorer(f"http://127.0.0.1:{closed_port()}", tuple(MODELS), ARTIFACTS.parent)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def request(explorer, method: str, path: str, body: bytes = b"", headers: dict | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", explorer.server_address[1], timeout=30)
    try:
        conn.request(method, path, body, {"Content-Type": "application/json"} | (headers or {}))
        response = conn.getresponse()
        assert response.getheader("Content-Type") == "application/json"
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_the_api_and_the_explorer_answer_errors_with_the_same_keys(explorer):
    api = InProcessWorker("sample", ARTIFACTS.parent)([{"n": 0}])[0]
    assert api.status == 400 and set(api.json()) == KEYS
    cases = [
        ("GET", "/nowhere", b"", {}, 404, "path"),
        ("POST", "/api/predictions/nope", b"{}", {}, 404, "model"),
        ("POST", "/api/predictions/sample2d", b"{}", {"Origin": "http://evil.example"}, 403, "Origin"),
        ("POST", "/api/predictions/sample2d", b"{}", {"Content-Type": "text/plain"}, 415, "Content-Type"),
        ("POST", "/api/predictions/sample2d", b"{}", {"Content-Length": str(10**7)}, 413, "body"),
        ("POST", "/api/predictions/sample2d", b"{}", {}, 502, None),  # the API is down: no field at fault
    ]
    for method, path, body, headers, status, field in cases:
        code, error = request(explorer, method, path, body, headers)
        assert (code, error["code"], error.get("field")) == (status, status, field), (path, headers, error)
        assert set(error) == (KEYS if field else KEYS - {"field"}) and error["reason"] and error["message"]
        assert set(error) <= set(api.json())


def test_the_documented_error_is_the_shape():
    schema = SPEC["components"]["schemas"]["Error"]
    assert set(schema["required"]) == set(schema["properties"]) == KEYS
    assert set(error_body(400, "r", "m", "f")) == KEYS and set(error_body(502, "r", "m")) == KEYS - {"field"}


def project_error_classes() -> dict[str, list[str]]:
    """{module: [its classes named *Error or deriving from an exception class]}, by reading every module."""
    found = {}
    for path in sorted(p for p in ROOT.rglob("*.py") if ".venv" not in p.parts and "tests" not in p.parts):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                    ast.unparse(b).endswith(("Error", "Exception", "NoSpace")) for b in node.bases):
                found.setdefault(str(path.relative_to(ROOT)), []).append(node.name)
    return found


def test_every_error_class_derives_from_the_one_base_and_lives_in_an_errors_module():
    """The project's errors derive from FmvaeError; the client package, which installs on its own, has its own
    base (ClientError) in its one errors module."""
    classes = project_error_classes()
    assert classes and all(module.endswith(("errors.py",)) for module in classes), classes
    for module, names in classes.items():
        client = module.startswith("client/")
        package = module.removesuffix(".py").removeprefix("client/").replace("/", ".")
        loaded = __import__(package, fromlist=names)
        for name in names:
            assert issubclass(getattr(loaded, name), ClientError if client else FmvaeError), f"{module}: {name}"


def test_expired_explorer_sessions_are_dropped(current_store, tmp_path, monkeypatch):
    """Sessions live SESSION_SECONDS; each new one drops the expired, so the table stays as small as the live ones."""
    from explorer import server as explorer_server
    key_file = tmp_path / "key_file.json"
    key_file.write_text(json.dumps({"management": {"key": "m"}, "inference": {"key": "secret"}, "API": {"key": "a"}}))
    page = Explorer("http://127.0.0.1:1", tuple(MODELS), ARTIFACTS.parent, key_file=key_file)
    try:
        clock = [1000.0]
        monkeypatch.setattr(explorer_server.time, "monotonic", lambda: clock[0])
        first = page.open_session("secret")
        assert first and page.open_session("wrong") is None
        clock[0] += explorer_server.SESSION_SECONDS + 1
        second = page.open_session("secret")
        assert list(page.sessions) == [second]
        assert page.authorized(f"{explorer_server.SESSION_COOKIE}={second}")
    finally:
        page.server_close()
