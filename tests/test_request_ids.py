"""Request IDs end to end on both hosts: every answer carries ``X-Request-ID``, errors included (the KServe host:
the client's own when valid, else a new one; TorchServe: its frontend's own ID, which the worker logs beside the
client's); with the access log on, each host logs the request's line with the answer's ID; the client sends one
per call, and the answer's comes back in its Response and exceptions."""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request

import pytest
from fmvae_client import APIError, Client

from serving.kserve.host import KServe
from serving.settings import KServeConfig, ServerConfig, TorchServeConfig
from serving.torchserve.host import TorchServe
from tests.conftest import ARTIFACTS

pytestmark = pytest.mark.integration
NEW_ID = re.compile(r"[0-9a-f]{32}")
TORCHSERVE_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")  # its frontend's UUID


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}


@pytest.mark.parametrize("host", ["server", "kserve_host"])
def test_every_answer_carries_the_clients_request_id_or_a_new_one(request, host):
    served = request.getfixturevalue(host)
    url = f"{served.url}/predictions/decode"
    cases = [(b'{"latents": [[0.0]]}', {"X-Request-ID": "client-7"}, "client-7"),  # a 400: errors too
             (b'{"latents": [[0.0]]}', {"X-Request-ID": "has space"}, None),  # invalid: a new one
             (b'{"latents": [[0.0]]}', {}, None)]
    torchserve = host == "server"
    for body, headers, expected in cases:
        status, answer = post(url, body, headers)
        assert status == 400
        rid = answer.get("x-request-id", "")
        if torchserve:
            assert TORCHSERVE_ID.fullmatch(rid), rid
        else:
            assert rid == expected if expected else NEW_ID.fullmatch(rid), (headers, rid)
    with Client(served.url) as client:
        response = client.call("sample", {"n": 1, "format": "json"}, request_id="from-the-client")
        assert response.request_id == response.headers["x-request-id"]
        assert (response.request_id == "from-the-client") != torchserve
        with pytest.raises(APIError) as raised:
            client.decode([[0.0]], request_id="refused-1")
        assert (raised.value.request_id == "refused-1") != torchserve


def test_the_kserve_hosts_own_answers_carry_it_too(kserve_host):
    status, answer = post(f"{kserve_host.url}/predictions/no_such_route", b"{}", {"X-Request-ID": "lost-2"})
    assert status == 404 and answer["x-request-id"] == "lost-2"
    with urllib.request.urlopen(urllib.request.Request(f"{kserve_host.url}/v2/health/live",
                                                       headers={"X-Request-ID": "probe-3"}), timeout=30) as r:
        assert r.headers["X-Request-ID"] == "probe-3"


def wait_for(path, text: str, timeout: float = 20) -> str:
    """The file's text once it holds ``text`` (the hosts' output reaches the log a moment later)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = path.read_text(errors="replace") if path.is_file() else ""
        if text in found:
            return found
        time.sleep(0.2)
    return path.read_text(errors="replace") if path.is_file() else ""


@pytest.mark.parametrize("host", ["torchserve", "kserve"])
def test_with_the_access_log_on_each_host_logs_the_request_id(current_store, tmp_path, host):
    config = ServerConfig(server=host, torchserve=TorchServeConfig(model_store=current_store),
                          export_store=ARTIFACTS.parent, models=("decode",), kserve=KServeConfig(processes=1),
                          access_log=True, log_dir=tmp_path).with_free_ports()
    with (TorchServe if host == "torchserve" else KServe)(config) as served:
        with Client(served.url) as client:
            fine = client.call("decode", {"latents": [[0.0] * 64], "format": "npy"}, request_id="logged-4")
            with pytest.raises(APIError) as raised:
                client.decode([[0.0]], request_id="logged-5")
        log = tmp_path / ("model_log.log" if host == "torchserve" else "kserve.out")
        text = wait_for(log, f"request {raised.value.request_id}")
    lines = {rid: [line for line in text.splitlines() if f"request {rid}" in line]
             for rid in (fine.request_id, raised.value.request_id)}
    assert any("/predictions/decode" in line and " 200 " in line for line in lines[fine.request_id]), text[-2000:]
    assert any(" 400 " in line for line in lines[raised.value.request_id]), text[-2000:]
    if host == "torchserve":  # the client's own ID beside TorchServe's
        assert "client's X-Request-ID logged-4" in lines[fine.request_id][0]
