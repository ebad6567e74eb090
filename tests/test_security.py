"""Secure serving defaults against a real TorchServe with token authorization on (the container's mode)."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from serving.settings import ServerConfig, TorchServeConfig
from serving.torchserve.host import TorchServe, config_properties

pytestmark = pytest.mark.integration  # a real TorchServe (Java) or Prometheus


@pytest.fixture(scope="module")
def secured(current_store, tmp_path_factory):
    config = ServerConfig(torchserve=TorchServeConfig(model_store=current_store), models=("sample",), token_auth=True,
                          work_dir=tmp_path_factory.mktemp("work")).with_free_ports()
    with TorchServe(config) as server:
        yield server


def call(url: str, body: bytes | None = None, token: str | None = None, method: str | None = None) -> tuple[int, str]:
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {token}"} if token else {})
    request = urllib.request.Request(url, data=body, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


BODY = b'{"n": 1, "seed": 1, "format": "json"}'


def test_requests_need_the_inference_key(secured):
    url = f"{secured.url}/predictions/sample"
    code, text = call(url, BODY)
    # TorchServe 0.12 answers a missing or wrong key with 400 InvalidKeyException (not 401)
    assert code == 400 and "InvalidKeyException" in text
    assert call(url, BODY, token="not-the-key")[0] == 400
    assert call(url, BODY, token=secured.key("management"))[0] == 400
    code, text = call(url, BODY, token=secured.key("inference"))
    assert code == 200 and len(json.loads(text)["images"]) == 1


def test_management_api_is_internal_and_registers_only_the_stores_archives(secured):
    properties = config_properties(secured.config, secured.config.torchserve.model_store)
    assert f"management_address=http://127.0.0.1:{secured.config.torchserve.management_port}" in properties
    # the inference port does not serve management routes, whatever the key
    for token in (secured.key("inference"), secured.key("management")):
        code, text = call(f"{secured.url}/models", token=token)
        assert code in (400, 404, 405) and '"models"' not in text
    management = f"http://127.0.0.1:{secured.config.torchserve.management_port}"
    code, text = call(f"{management}/models", token=secured.key("management"))
    assert code == 200 and "sample" in text  # the management API itself works, on loopback, with its key
    code, text = call(f"{management}/models?url=https://example.com/evil.mar", b"", secured.key("management"),
                      "POST")
    assert code >= 400 and "evil" not in call(f"{management}/models", token=secured.key("management"))[1]
    code, _ = call(f"{management}/models?url=sample.mar", b"", secured.key("inference"), "POST")
    assert code == 400  # registration needs the management key


def test_oversized_bodies_are_refused(secured):
    url = f"{secured.url}/predictions/sample"
    key = secured.key("inference")
    code, text = call(url, b'{"n": 1, "pad": "' + b"x" * 600_000 + b'"}', key)
    assert code == 413 and json.loads(text)["reason"] == "body_too_large"
    # Over max_request_size TorchServe answers from the headers (Content-Length, Expect: 100-continue); a
    # client that streams the body anyway may see the connection closed before it reads the 413.
    conn = http.client.HTTPConnection("127.0.0.1", secured.config.inference_port, timeout=30)
    conn.putrequest("POST", "/predictions/sample")
    for name, value in {"Content-Type": "application/json", "Content-Length": "2000000",
                        "Expect": "100-continue", "Authorization": f"Bearer {key}"}.items():
        conn.putheader(name, value)
    conn.endheaders()
    assert conn.getresponse().status == 413
    conn.close()


def test_health_check_uses_the_keys(secured):
    health = [sys.executable, "-m", "serving.health", "--url", secured.url, "--management-url",
              secured.management_url, "--models", "sample"]
    refused = subprocess.run(health, capture_output=True, text=True)  # no keys: /ping refuses
    assert refused.returncode == 1 and "unhealthy: /ping" in refused.stdout
    ok = subprocess.run([*health, "--work-dir", str(secured.work_dir)], capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout == "healthy: sample ready\n"
